#!/usr/bin/env bash
# buf breaking: compare proto/ with proto/ of an earlier revision (default: the
# previous commit), both built with the current buf.yaml and vendored protos, so
# that a change of buf layout is not mistaken for a change of contract.
set -euo pipefail
buf=$1
base=${BUF_AGAINST_REF:-HEAD~1}
if ! git cat-file -e "$base:proto" 2>/dev/null; then
  echo "buf breaking: $base has no proto/ to compare with"
  exit 0
fi
against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
git archive "$base" proto | tar -x -C "$against"
cp -r buf.yaml third_party "$against/"
"$buf" breaking --against "$against"
echo "buf breaking: no breaking change against $base"
