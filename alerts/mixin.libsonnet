// The worker monitoring mixin: config, recording rules and alerts in one object.
// prometheusRules and prometheusAlerts hold the rule groups (the alerting pipeline's own
// alerts in pipeline.libsonnet); _config the settings.
(import 'config.libsonnet')
+ (import 'rules.libsonnet')
+ (import 'alerts.libsonnet')
+ (import 'slo.libsonnet')
+ (import 'pipeline.libsonnet')
