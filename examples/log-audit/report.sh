#!/bin/sh
# Join the per-file results (JSON on stdin: the step input) into
# $INPUT_OUT/report.json and a markdown summary $INPUT_OUT/report.md.
# Prints the report JSON.
set -eu
mkdir -p "$INPUT_OUT"
# stdin is the step's input as one JSON object: {"files": [...], "out": ...}.
cat > "$INPUT_OUT/report.json"
awk '
  # Each file object is written with sorted keys:
  # {"error_lines":E,"file":"F","lines":L,"sha256":...,"top":[...]}
  {
    s = $0
    while (match(s, /"error_lines":[0-9]+,"file":"[^"]*","lines":[0-9]+/)) {
      part = substr(s, RSTART, RLENGTH)
      s = substr(s, RSTART + RLENGTH)
      split(part, kv, "\"")
      errs = kv[3]; sub(/^:/, "", errs); sub(/,$/, "", errs)
      file = kv[6]
      lines = part; sub(/.*"lines":/, "", lines)
      total += lines; terr += errs
      rows = rows sprintf("| %s | %d | %d |\n", file, lines, errs)
    }
  }
  END {
    print "# Log audit report\n"
    print "| file | lines | error/failure lines |"
    print "| --- | ---: | ---: |"
    printf "%s", rows
    printf "| **total** | **%d** | **%d** |\n", total, terr
  }' "$INPUT_OUT/report.json" > "$INPUT_OUT/report.md"
cat "$INPUT_OUT/report.json"
