#!/bin/sh
# azd postdeploy hook: the Event Grid subscriptions point at functions, so they are created only once the code
# is deployed (Event Grid validates the endpoint, and the blobs_extension system key appears when the blob
# trigger starts). First `azd up`: provision without them, deploy, then provision again with them.
# Later runs: the flag is already true, provisioning keeps them in sync with infra/eventgrid-subscriptions.json.
set -eu

if [ "$(azd env get-value EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS 2>/dev/null || true)" = "true" ]; then
  echo "Event Grid subscriptions are managed by provisioning (EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS=true)."
  exit 0
fi

echo "Code deployed; creating the Event Grid subscriptions (second provision)."
azd env set EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS true
EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS=true azd provision --no-prompt
