#!/usr/bin/env bash
# timed.sh "what" CMD...: run a long step, saying what it is and how long it took.
. "$(dirname "$0")/common.sh"
what=$1
shift
rb_step "$what" "$@"
