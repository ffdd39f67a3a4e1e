# azd postdeploy hook, Windows twin of postdeploy.sh (keep the two in step). The Event Grid subscriptions
# point at functions, so they are created only once the code is deployed: Event Grid validates the endpoint,
# and the blob trigger's webhook needs the host's blobs_extension system key, which appears only once the host
# has started the blob trigger. So: warm the app, wait for that key, then provision again with the
# subscriptions. Later runs: the flag is already true and the first provision creates or updates them (it never
# deletes one removed from infra/eventgrid-subscriptions.json: see "Deploy to Azure" in the README).
$ErrorActionPreference = 'Stop'

if ((azd env get-value EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS 2>$null) -eq 'true') {
    Write-Host 'Event Grid subscriptions are managed by provisioning (EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS=true).'
    exit 0
}

$app = if ($env:AZURE_FUNCTION_APP_NAME) { $env:AZURE_FUNCTION_APP_NAME } else { azd env get-value AZURE_FUNCTION_APP_NAME }
$group = if ($env:AZURE_RESOURCE_GROUP) { $env:AZURE_RESOURCE_GROUP } else { azd env get-value AZURE_RESOURCE_GROUP }
$timeout = if ($env:EVERGREEN_KEY_WAIT_SECONDS) { [int]$env:EVERGREEN_KEY_WAIT_SECONDS } else { 600 }

if (Get-Command az -ErrorAction SilentlyContinue) {
    $appHost = az functionapp show -g $group -n $app --query defaultHostName -o tsv
    Write-Host "Waiting for the blobs_extension key of $app (up to ${timeout}s; the first request starts the host)."
    $waited = 0
    while ($true) {
        # Any request wakes a scaled-to-zero Flex app; the answer itself does not matter.
        try { Invoke-WebRequest -Uri "https://$appHost/" -UseBasicParsing -TimeoutSec 30 | Out-Null } catch { }
        $key = az functionapp keys list -g $group -n $app --query systemKeys.blobs_extension -o tsv 2>$null
        if ($key) {
            Write-Host 'The blobs_extension key exists.'
            break
        }
        if ($waited -ge $timeout) {
            Write-Error ("No blobs_extension key after ${timeout}s: is on_blob_created deployed and the host healthy? " +
                "Check the app's logs, then run 'azd env set EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS true; azd provision'.")
            exit 1
        }
        Start-Sleep -Seconds 15
        $waited += 15
    }
}
else {
    Write-Warning ("Azure CLI (az) not found: cannot wait for the blobs_extension key; provisioning may fail if the " +
        "host has not started yet. Then run 'azd env set EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS true; azd provision'.")
}

Write-Host 'Code deployed; creating the Event Grid subscriptions (second provision).'
azd env set EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS true
$env:EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS = 'true'
azd provision --no-prompt
if ($LASTEXITCODE -ne 0) {
    # Back to false, so that the next `azd up` provisions without them and comes through this hook again.
    azd env set EVERGREEN_DEPLOY_EVENT_SUBSCRIPTIONS false
    exit 1
}
