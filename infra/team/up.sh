#!/usr/bin/env bash
# Start the team stack (PostgreSQL + SeaweedFS S3 + MLflow with auth) on this host; a no-op if it runs.
# Extra arguments go to stack.py (e.g. --dir /srv/boneseg-team, --free-ports). See infra/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python infra/team/stack.py up "$@"
