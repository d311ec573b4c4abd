#!/usr/bin/env bash
# RUSTC_WRAPPER for sim/coverage/run.sh: instruments only the project's own
# crates, so dependencies build as usual and the profile counts our code.
rustc="$1"
shift
crate=""
prev=""
for arg in "$@"; do
    if [ "$prev" = "--crate-name" ]; then crate="$arg"; fi
    prev="$arg"
done
case "$crate" in
    mesh_core | mesh_net | sim) exec "$rustc" "$@" -C instrument-coverage ;;
    *) exec "$rustc" "$@" ;;
esac
