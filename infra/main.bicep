// Evergreen on Azure: everything `azd up` deploys.
// Scope is the subscription so that one deployment can create Evergreen's resource group and also touch the
// resource groups of the *existing* Azure ML workspace and data storage account (role assignments and the
// Event Grid system topics of those two resources live next to them).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; seeds resource names.')
param environmentName string

@minLength(1)
@description('Region of Evergreen\'s own resources. Must offer Flex Consumption.')
param location string

@description('Name of Evergreen\'s resource group (created). Empty: rg-evergreen-<environmentName>.')
param resourceGroupName string = ''

@description('Existing Azure ML workspace that Evergreen automates.')
param workspaceName string

@description('Resource group of the existing Azure ML workspace.')
param workspaceResourceGroupName string

@description('Existing storage account into which the team drops training data.')
param dataStorageAccountName string

@description('Resource group of the existing data storage account.')
param dataStorageResourceGroupName string

@description('Container of the data account that receives training data. The storage subscriptions of eventgrid-subscriptions.json get it in their subject filters (the file names the local stack\'s container).')
param landingContainerName string = 'landing'

@description('Other containers of the data account that blob retention rules of the policy name, comma-separated. Evergreen gets Storage Blob Data Contributor on these and on the landing container only.')
param retentionContainerNames string = ''

@description('Existing Event Grid system topic of the data account (in its resource group) to reuse: Azure allows one per source. It must have a system-assigned identity (dead-lettering). Empty: Evergreen creates one.')
param dataSystemTopicName string = ''

@description('Existing Event Grid system topic of the workspace (in its resource group) to reuse: Azure allows one per source. It must have a system-assigned identity (dead-lettering). Empty: Evergreen creates one.')
param workspaceSystemTopicName string = ''

@description('NCRONTAB schedule of the retention function (six fields, UTC).')
param retentionSchedule string = '0 0 3 * * *'

@description('Optional path of the lifecycle policy file inside the deployed package.')
param policyPath string = ''

@secure()
@description('Shared secret of the model-registry webhook. Empty: the Key Vault secret is left alone (set it with az keyvault secret set).')
param webhookSecret string = ''

@description('Create the Event Grid subscriptions. They point at functions, so they can only be created after the code is deployed: azd runs the postdeploy hook, which sets this to true and provisions again.')
param deployEventSubscriptions bool = false

@description('Upper bound of Flex Consumption instances (cost guard). It applies to each per-function scale group (the HTTP functions together, the blob trigger, each queue/timer/Event Grid function on its own), not to the app as a whole.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Put App Service Authentication (Entra ID sign-in) in front of the HTTP functions, e.g. the status page. Off by default: function keys guard them.')
param enableAuth bool = false

@description('With enableAuth: the client id of the Entra ID app registration people sign in with.')
param authClientId string = ''

@description('E-mail address Evergreen\'s Azure Monitor alerts go to (dead letters, failed retraining, rolled-back rollouts, stuck work, retention errors). Empty: the alert rules fire without notifying anyone.')
param alertEmail string = ''

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName, application: 'evergreen' }
var functionAppName = 'func-evergreen-${resourceToken}'
// The landing container first: it holds the drops and the versions' snapshots (_evergreen/).
var dataContainerNames = union([landingContainerName], map(filter(split(retentionContainerNames, ','), name => !empty(trim(name))), name => trim(name)))

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-evergreen-${environmentName}'
  location: location
  tags: tags
}

module app 'modules/app.bicep' = {
  name: 'evergreen-app'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    functionAppName: functionAppName
    workspaceName: workspaceName
    workspaceResourceGroupName: workspaceResourceGroupName
    dataStorageAccountName: dataStorageAccountName
    dataStorageResourceGroupName: dataStorageResourceGroupName
    landingContainerName: landingContainerName
    retentionSchedule: retentionSchedule
    policyPath: policyPath
    webhookSecret: webhookSecret
    maximumInstanceCount: maximumInstanceCount
    enableAuth: enableAuth
    authClientId: authClientId
  }
}

// Azure Monitor: the action group (alertEmail), log alert rules over Evergreen's spans, and the workbook.
module monitoring 'modules/monitoring.bicep' = {
  name: 'evergreen-monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    appInsightsId: app.outputs.appInsightsId
    alertEmail: alertEmail
  }
}

// Data account: the identity's data-plane roles there, and the account's Event Grid system topic.
module dataAccess 'modules/data-access.bicep' = {
  name: 'evergreen-data-access'
  scope: resourceGroup(dataStorageResourceGroupName)
  params: {
    dataStorageAccountName: dataStorageAccountName
    identityPrincipalId: app.outputs.identityPrincipalId
    containerNames: dataContainerNames
    systemTopicName: 'evgt-evergreen-data-${resourceToken}'
    existingSystemTopicName: dataSystemTopicName
    tags: tags
  }
}

// Workspace: AzureML Data Scientist for the identity, and the workspace's Event Grid system topic.
module workspaceAccess 'modules/workspace-access.bicep' = {
  name: 'evergreen-workspace-access'
  scope: resourceGroup(workspaceResourceGroupName)
  params: {
    workspaceName: workspaceName
    identityPrincipalId: app.outputs.identityPrincipalId
    systemTopicName: 'evgt-evergreen-ws-${resourceToken}'
    existingSystemTopicName: workspaceSystemTopicName
    tags: tags
  }
}

// Each topic dead-letters with its own system-assigned identity into containers of Evergreen's storage.
module deadLetterAccess 'modules/dead-letter-access.bicep' = {
  name: 'evergreen-dead-letter-access'
  scope: rg
  params: {
    storageAccountName: app.outputs.appStorageAccountName
    topicPrincipalIds: [
      dataAccess.outputs.systemTopicPrincipalId
      workspaceAccess.outputs.systemTopicPrincipalId
      app.outputs.eventsTopicPrincipalId
    ]
  }
}

// One module instance per topic of eventgrid-subscriptions.json; each picks its own entries from the file.
module storageSubscriptions 'modules/event-subscriptions.bicep' = if (deployEventSubscriptions) {
  name: 'evergreen-subscriptions-storage'
  scope: resourceGroup(dataStorageResourceGroupName)
  params: {
    topicKey: 'storage'
    topicName: dataAccess.outputs.systemTopicName
    isSystemTopic: true
    functionAppName: functionAppName
    functionAppResourceGroupName: rg.name
    deadLetterStorageAccountId: app.outputs.appStorageAccountId
    landingContainerName: landingContainerName
  }
  dependsOn: [deadLetterAccess]
}

module workspaceSubscriptions 'modules/event-subscriptions.bicep' = if (deployEventSubscriptions) {
  name: 'evergreen-subscriptions-workspace'
  scope: resourceGroup(workspaceResourceGroupName)
  params: {
    topicKey: 'workspace'
    topicName: workspaceAccess.outputs.systemTopicName
    isSystemTopic: true
    functionAppName: functionAppName
    functionAppResourceGroupName: rg.name
    deadLetterStorageAccountId: app.outputs.appStorageAccountId
    landingContainerName: landingContainerName
  }
  dependsOn: [deadLetterAccess]
}

module evergreenSubscriptions 'modules/event-subscriptions.bicep' = if (deployEventSubscriptions) {
  name: 'evergreen-subscriptions-evergreen'
  scope: rg
  params: {
    topicKey: 'evergreen'
    topicName: app.outputs.eventsTopicName
    isSystemTopic: false
    functionAppName: functionAppName
    functionAppResourceGroupName: rg.name
    deadLetterStorageAccountId: app.outputs.appStorageAccountId
    landingContainerName: landingContainerName
  }
  dependsOn: [deadLetterAccess]
}

// azd stores outputs in the environment (.azure/<env>/.env); the postdeploy hook reads some of them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.functionAppName
output EVERGREEN_IDENTITY_CLIENT_ID string = app.outputs.identityClientId
output EVERGREEN_EVENTS_TOPIC_ENDPOINT string = app.outputs.eventsTopicEndpoint
output EVERGREEN_KEY_VAULT_NAME string = app.outputs.keyVaultName
