#!/bin/sh
# Extract error and failure lines of $INPUT_FILE into $INPUT_OUT/NAME.errors.log.
# With CHRONICLE_FLAKY set, the first two attempts fail (to watch retries).
set -eu
if [ -n "${CHRONICLE_FLAKY:-}" ] && [ "$CHRONICLE_ATTEMPT" -lt 3 ]; then
  echo "flaky failure on attempt $CHRONICLE_ATTEMPT (CHRONICLE_FLAKY is set)" >&2
  exit 75
fi
[ -n "${INPUT_PACE:-}" ] && [ "$INPUT_PACE" != 0 ] && sleep "$INPUT_PACE"
mkdir -p "$INPUT_OUT"
name=$(basename "$INPUT_FILE" .log)
out="$INPUT_OUT/$name.errors.log"
grep -Ei 'error|fail' "$INPUT_FILE" > "$out" || true
n=$(wc -l < "$out")
printf '{"error_lines":%d,"errors_file":"%s"}\n' "$n" "$out"
