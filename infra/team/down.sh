#!/usr/bin/env bash
# Stop every process of the team stack; its data stays in the state folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python infra/team/stack.py down "$@"
