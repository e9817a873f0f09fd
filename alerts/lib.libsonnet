// Number formatting for PromQL and annotations.
{
  // Shortest exact text of a number: 0.1 -> '0.1', 1000 -> '1000', 1234567 -> '1234567'.
  // ('%g' alone rounds to 6 digits, which would silently change a threshold in PromQL.)
  num(x)::
    local short = '%g' % x;
    if std.parseJson(short) == x then short else std.toString(x),

  // A ratio as a percentage for humans: 0.1 -> '10%'.
  pct(ratio):: '%g%%' % (ratio * 100),
}
