#!/bin/sh
# Writes the seed corpora of every fuzz target to fuzz/corpus/<target>/ (not committed):
# the test vectors plus valid frames signed with the `validate` target's fixed key.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
ROOKERY_FUZZ_SEEDS="$root/fuzz/corpus" \
    cargo test --test atproto regressions::fuzz_seeds_are_valid_and_written_on_request -- --exact --nocapture
