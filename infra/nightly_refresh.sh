#!/usr/bin/env bash
# Submit one refresh to a running Ray cluster and wait for it (the nightly CronJob's command).
#
#   RAY_ADDRESS=http://vidcat-head-svc:8265 infra/nightly_refresh.sh \
#       python jobs/embed_catalog.py --mode incremental --manifest s3://... --db s3://... ...
#
# - Skips (exit 0) while another refresh is active on the cluster: Ray jobs whose metadata
#   has app=vidcat-refresh (manual RayJobs carry it too). Overlapping runs are safe, the
#   writes are idempotent, but they would compete for the same GPUs.
# - Stops the Ray job when this process is terminated (CronJob deadline, pod deletion), so
#   no orphaned refresh keeps GPUs busy.
# - Exits 0 when the Ray job succeeded, non-zero otherwise; the job's own exit code
#   (1 failure, 2 invalid input, 3 too many failed videos) is in the status line printed last.
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: RAY_ADDRESS=http://<head>:8265 $0 <entrypoint...>" >&2
  exit 64
fi
: "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray dashboard URL, e.g. http://vidcat-head-svc:8265}"
export RAY_ADDRESS

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
trigger="${VIDCAT_TRIGGER:-nightly}"
submission_id="vidcat-${trigger}-$(date -u +%Y%m%dT%H%M%SZ)"

active="$(python - <<'PY'
import os

from ray.job_submission import JobSubmissionClient

jobs = JobSubmissionClient(os.environ["RAY_ADDRESS"]).list_jobs()
print(" ".join(
    j.submission_id or j.job_id or "?"
    for j in jobs
    if (j.metadata or {}).get("app") == "vidcat-refresh" and not j.status.is_terminal()
))
PY
)"
if [[ -n "$active" ]]; then
  echo "a refresh is already running (${active}); skipping ${submission_id}"
  exit 0
fi

echo "submitting ${submission_id}: $*"
ray job submit \
  --address "$RAY_ADDRESS" \
  --submission-id "$submission_id" \
  --runtime-env "$here/runtime_env.yaml" \
  --metadata-json "{\"app\": \"vidcat-refresh\", \"trigger\": \"${trigger}\"}" \
  -- "$@" &
submitter=$!

stop_job() {
  echo "terminated: stopping Ray job ${submission_id}" >&2
  ray job stop --address "$RAY_ADDRESS" "$submission_id" || true
  kill "$submitter" 2>/dev/null || true
  exit 143
}
trap stop_job TERM INT

rc=0
wait "$submitter" || rc=$?
ray job status --address "$RAY_ADDRESS" "$submission_id" || true
exit "$rc"
