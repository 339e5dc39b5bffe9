#!/usr/bin/env bash
# buf breaking: compare the working tree's proto/ with proto/ of an earlier revision:
#   - BUF_AGAINST_REF when it is set;
#   - on a branch other than main: main as the branch knows it (the merge base of
#     HEAD and main, or origin/main in a clone without a local main), so that what
#     main changed since the branch left it is not reported as the branch's change;
#   - on main (or with no main to compare with): the previous commit.
# Both sides are built with the current buf.yaml and vendored protos, so that a
# change of buf layout is not mistaken for a change of contract. Without the
# history to compare with (a single commit, a shallow clone) it says so and passes.
set -euo pipefail
buf=$1

skip() {
  echo "buf breaking: skipped, $*"
  exit 0
}

has_commit() {
  git rev-parse --verify --quiet "$1^{commit}" >/dev/null
}

if [[ -n ${BUF_AGAINST_REF:-} ]]; then
  base=$BUF_AGAINST_REF
  what="BUF_AGAINST_REF"
else
  has_commit HEAD || skip "no commit yet"
  main=""
  for ref in main origin/main; do
    if has_commit "$ref"; then
      main=$ref
      break
    fi
  done
  branch=$(git symbolic-ref --quiet --short HEAD || true) # empty on a detached HEAD
  if [[ -n $main && $branch != main && $(git rev-parse HEAD) != $(git rev-parse "$main") ]]; then
    base=$(git merge-base HEAD "$main" 2>/dev/null) ||
      skip "no common history with $main here (a shallow clone?): nothing to compare with"
    what="$main where this branch left it"
  else
    has_commit HEAD~1 || skip "HEAD has no parent here (a single commit or a shallow clone): nothing to compare with"
    base=$(git rev-parse HEAD~1)
    what="the previous commit"
  fi
fi
label="$what ($(git rev-parse --short "$base" 2>/dev/null || echo "$base"))"
if ! git cat-file -e "$base:proto" 2>/dev/null; then
  echo "buf breaking: $label has no proto/ to compare with"
  exit 0
fi
against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
git archive "$base" proto | tar -x -C "$against"
cp -r buf.yaml third_party "$against/"
echo "buf breaking: comparing the working tree's proto/ with $label"
"$buf" breaking --against "$against"
echo "buf breaking: no breaking change against $label"
