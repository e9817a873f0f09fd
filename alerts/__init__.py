"""Alert and recording rules as code: jsonnet sources rendered to Prometheus rule files."""
