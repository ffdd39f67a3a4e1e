#!/bin/sh
# azd postdeploy hook (its Windows twin: postdeploy.ps1). The Event Grid subscriptions point at functions, so
# they are created only once the code is deployed: Event Grid validates the endpoint, and the blob trigger's
# webhook needs the host's blobs_extension system key, which appears only once the host has started the blob
# trigger. So: warm the app, wait for that key, then provision again with the subscriptions.
# First `azd up`: provision without them, deploy, then this hook provisions with them. Later runs: the flag is
# already true and the first provision creates or updates them (it never deletes one removed from
# infra/eventgrid-subscriptions.json: see "Deploy to Azure" in the README).
set -eu

if [ "$(azd env get-value EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS 2>/dev/null || true)" = "true" ]; then
  echo "Event Grid subscriptions are managed by provisioning (EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS=true)."
  exit 0
fi

app="${AZURE_FUNCTION_APP_NAME:-$(azd env get-value AZURE_FUNCTION_APP_NAME)}"
group="${AZURE_RESOURCE_GROUP:-$(azd env get-value AZURE_RESOURCE_GROUP)}"
timeout="${EVERGREEN_KEY_WAIT_SECONDS:-600}"

if command -v az >/dev/null 2>&1; then
  host="$(az functionapp show -g "$group" -n "$app" --query defaultHostName -o tsv)"
  echo "Waiting for the blobs_extension key of $app (up to ${timeout}s; the first request starts the host)."
  waited=0
  while :; do
    # Any request wakes a scaled-to-zero Flex app; the answer itself does not matter.
    curl -s -o /dev/null --max-time 30 "https://$host/" || true
    key="$(az functionapp keys list -g "$group" -n "$app" --query systemKeys.blobs_extension -o tsv 2>/dev/null || true)"
    if [ -n "$key" ]; then
      echo "The blobs_extension key exists."
      break
    fi
    if [ "$waited" -ge "$timeout" ]; then
      echo "No blobs_extension key after ${timeout}s: is on_blob_created deployed and the host healthy? Check the" >&2
      echo "app's logs, then run 'azd env set EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS true && azd provision'." >&2
      exit 1
    fi
    sleep 15
    waited=$((waited + 15))
  done
else
  echo "Azure CLI (az) not found: cannot wait for the blobs_extension key; provisioning may fail if the host" >&2
  echo "has not started yet. Then run 'azd env set EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS true && azd provision'." >&2
fi

echo "Code deployed; creating the Event Grid subscriptions (second provision)."
azd env set EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS true
if ! EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS=true azd provision --no-prompt; then
  # Back to false, so that the next `azd up` provisions without them and comes through this hook again.
  azd env set EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS false
  exit 1
fi
