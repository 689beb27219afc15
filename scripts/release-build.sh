#!/usr/bin/env bash
# The release build, what the Dockerfile ships and `make bench` measures, optimised with a
# profile of the crew at work (profile-guided optimisation):
#   1. the binaries built to count what runs (target/pgo/instrumented);
#   2. a training run: plans through a whole crew on a nats-server (`crew bench`), at full
#      speed and at 100 plans/s;
#   3. the counts merged with llvm-profdata (rustup's llvm-tools, the LLVM of this rustc);
#   4. target/release built with them: the binaries, and the examples `make bench` runs.
# The training is skipped while the profile is newer than the instrumented binaries, so a
# second run without a source change rebuilds nothing. INFRACREW_PGO=0 builds the release
# profile as it is, without training.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf 'release-build: %s\n' "$*" >&2; }

pgo="$root/target/pgo"
profile="$pgo/merged.profdata"

if [ "${INFRACREW_PGO:-1}" = 0 ]; then
  say "INFRACREW_PGO=0: the release profile without training"
  exec cargo build --release --workspace --bins --examples --locked
fi

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  say "installing rustup's llvm-tools (llvm-profdata for this rustc's LLVM)"
  rustup component add llvm-tools
fi

instrumented="$pgo/instrumented/release"
say "1/4 instrumented binaries (a cold build takes about 20 minutes on 2 cores)"
RUSTFLAGS="-Cprofile-generate=$pgo/raw" \
  cargo build --release --workspace --bins --locked --target-dir "$pgo/instrumented"

stale=0
for bin in atlas forge sentinel conductor crew; do
  [ "$profile" -nt "$instrumented/$bin" ] || stale=1
done
if [ "$stale" = 1 ]; then
  say "2/4 training: plans through a whole crew (log: $pgo/training.log)"
  # The build's own scripts ran instrumented too; only the training's counts are kept.
  rm -rf "$pgo/raw"
  if ! { "$instrumented/crew" bench --plans 2000 &&
    "$instrumented/crew" bench --plans 300 --rate 100; } >"$pgo/training.log" 2>&1; then
    tail -n 20 "$pgo/training.log" >&2
    say "the training run failed (above, and in $pgo/training.log): no profile, no release build"
    exit 1
  fi
  say "3/4 merging the counts into $profile"
  "$profdata" merge -o "$profile" "$pgo/raw"
else
  say "2/4 and 3/4: $profile is newer than the instrumented binaries, kept"
fi

say "4/4 the release build with the profile (target/release; about 13 minutes cold)"
RUSTFLAGS="-Cprofile-use=$profile" cargo build --release --workspace --bins --examples --locked
