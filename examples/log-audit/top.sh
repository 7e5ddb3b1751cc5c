#!/bin/sh
# The ten most frequent messages of $INPUT_FILE, with numbers and ids
# masked (hex runs of 8+ characters become <id>, numbers <n>, whitespace
# runs one space).
set -eu
[ -n "${INPUT_PACE:-}" ] && [ "$INPUT_PACE" != 0 ] && sleep "$INPUT_PACE"
awk '{
  line = tolower($0)
  gsub(/[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]+/, "<id>", line)
  gsub(/[0-9]+/, "<n>", line)
  # Whitespace runs as one space, none at the ends: lines that differ
  # only in spacing are one message.
  gsub(/[ \t\r]+/, " ", line)
  sub(/^ /, "", line)
  sub(/ $/, "", line)
  print line
}' "$INPUT_FILE" | sort | uniq -c | sort -rn | awk '
  BEGIN { printf "{\"top\":[" }
  NR <= 10 {
    c = $1; $1 = ""; sub(/^ +/, "")
    gsub(/\\/, "\\\\"); gsub(/"/, "\\\"")
    printf "%s{\"count\":%d,\"message\":\"%s\"}", (NR > 1 ? "," : ""), c, $0
  }
  END { print "]}" }'
