#!/bin/sh
# Count the lines of $INPUT_FILE and hash it. Prints one JSON object.
set -eu
[ -n "${INPUT_PACE:-}" ] && [ "$INPUT_PACE" != 0 ] && sleep "$INPUT_PACE"
# Lines as a person counts them: a last line without a newline counts too
# (awk reads it as a record; `wc -l` counts newline characters).
lines=$(awk 'END { print NR }' "$INPUT_FILE")
sha=$(sha256sum "$INPUT_FILE" | awk '{print $1}')
printf '{"file":"%s","lines":%d,"sha256":"%s"}\n' "$INPUT_FILE" "$lines" "$sha"
