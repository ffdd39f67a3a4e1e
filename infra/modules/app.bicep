// Evergreen's own resources: identity, host storage, monitoring, Flex Consumption app, Key Vault, custom topic.
import { builtInRoles } from 'roles.bicep'

param location string
param tags object
param resourceToken string
param functionAppName string
param workspaceName string
param workspaceResourceGroupName string
param dataStorageAccountName string
param dataStorageResourceGroupName string
param landingContainerName string
param retentionSchedule string
param policyPath string
@secure()
param webhookSecret string
param maximumInstanceCount int
@description('Put App Service Authentication (Entra ID sign-in) in front of the HTTP functions, e.g. the status page (/api/status). Off by default: function keys guard them.')
param enableAuth bool = false
@description('With enableAuth: the client id of the Entra ID app registration people sign in with (ID tokens enabled; redirect URI https://<app>/.auth/login/aad/callback).')
param authClientId string = ''

// Dead-letter containers named in the shared subscription file, created once each in Evergreen's storage.
var subscriptionsFile = loadJsonContent('../eventgrid-subscriptions.json')
var deadLetterContainers = union(map(filter(subscriptionsFile.subscriptions, s => contains(s, 'deadLetter')), s => s.deadLetter.container), [])
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
var webhookSecretName = 'evergreen-webhook-secret'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-evergreen-${resourceToken}'
  location: location
  tags: tags
}

// --- Host storage (AzureWebJobsStorage): ledger tables, queues, deployment package. Keys are disabled. ---
resource appStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stevergreen${resourceToken}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: appStorage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for name in deadLetterContainers: {
  parent: blobService
  name: name
}]

// Host storage roles. Source: https://learn.microsoft.com/azure/azure-functions/functions-reference#connecting-to-host-storage-with-an-identity
// Blob Data *Owner* because the Functions host requires it on AzureWebJobsStorage (keys/secrets, singleton
// locks, the Flex deployment package container); the docs name it as the minimum role for host storage.
resource appStorageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appStorage.id, identity.id, builtInRoles.storageBlobDataOwner)
  scope: appStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Queue triggers (evergreen-batch-seal, evergreen-rollout, evergreen-blob-retry, evergreen-retrain-check, evergreen-promotion-retry) and the blob trigger's internal queues.
resource appStorageQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appStorage.id, identity.id, builtInRoles.storageQueueDataContributor)
  scope: appStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.storageQueueDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Ledger tables (and the host's diagnostic events table).
resource appStorageTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appStorage.id, identity.id, builtInRoles.storageTableDataContributor)
  scope: appStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.storageTableDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// --- Monitoring: local (key) auth disabled, ingestion authenticated with the identity (Entra ID). ---
resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-evergreen-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-evergreen-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true
  }
}

resource appInsightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identity.id, builtInRoles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// --- Key Vault (RBAC mode) holding the registry webhook secret. ---
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-evg-${resourceToken}'
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
  }
}

// Only written when a value is given, so a later provision never blanks a secret set by hand.
resource webhookSecretValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(webhookSecret)) {
  parent: vault
  name: webhookSecretName
  properties: {
    value: webhookSecret
  }
}

// Scoped to the vault: it is Evergreen's own and holds only this secret (the secret may be created by hand,
// after provisioning, so it cannot always be the scope).
resource vaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identity.id, builtInRoles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// --- Evergreen's custom topic (Evergreen.DataVersionRegistered, ...). Publishing needs Entra ID: no keys. ---
resource eventsTopic 'Microsoft.EventGrid/topics@2025-02-15' = {
  name: 'evgt-evergreen-${resourceToken}'
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    inputSchema: 'EventGridSchema'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

resource eventsTopicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventsTopic.id, identity.id, builtInRoles.eventGridDataSender)
  scope: eventsTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.eventGridDataSender)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// --- Function App on Flex Consumption. ---
// Source: https://learn.microsoft.com/azure/azure-functions/flex-consumption-how-to and
// Azure-Samples/functions-quickstart-python-azd-eventgrid-blob (infra/main.bicep).
resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-evergreen-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource dataAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: dataStorageAccountName
  scope: resourceGroup(dataStorageResourceGroupName)
}

// Every setting the app reads in Azure. No keys, no connection strings: each connection is identity-based
// (https://learn.microsoft.com/azure/azure-functions/functions-reference#configure-an-identity-based-connection).
// FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION are deliberately absent: Flex Consumption takes the
// runtime from functionAppConfig and rejects those settings.
var appSettings = {
  AzureWebJobsStorage__accountName: appStorage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId
  DATA_STORAGE__blobServiceUri: dataAccount.properties.primaryEndpoints.blob
  // The blob trigger writes poison messages to a queue of the account of its connection.
  DATA_STORAGE__queueServiceUri: dataAccount.properties.primaryEndpoints.queue
  DATA_STORAGE__credential: 'managedidentity'
  DATA_STORAGE__clientId: identity.properties.clientId
  AZURE_CLIENT_ID: identity.properties.clientId
  AZURE_SUBSCRIPTION_ID: subscription().subscriptionId
  AZURE_RESOURCE_GROUP: workspaceResourceGroupName
  AZUREML_WORKSPACE_NAME: workspaceName
  EVERGREEN_EVENTS_TOPIC_ENDPOINT: eventsTopic.properties.endpoint
  EVERGREEN_LANDING_CONTAINER: landingContainerName
  EVERGREEN_POLICY_PATH: policyPath
  EVERGREEN_RETENTION_SCHEDULE: retentionSchedule
  EVERGREEN_RECONCILE_SCHEDULE: '0 */5 * * * *'
  EVERGREEN_RESCORE_SCHEDULE: '0 30 4 * * *'
  EVERGREEN_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${vault.properties.vaultUri}secrets/${webhookSecretName})'
  // Holds the instrumentation key, an identifier, not a credential: local auth is disabled on the component
  // and ingestion is authenticated by the next setting (Entra ID, Monitoring Metrics Publisher).
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'
  // host.json sets "telemetryMode": "OpenTelemetry": the host exports its own spans and hands each invocation's
  // trace context to the worker (this setting); the app's code exports its spans itself
  // (shared/telemetry.py: configure_azure_monitor with the identity above). The worker's built-in exporter
  // (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY) stays off, or every span would be sent twice.
  PYTHON_ENABLE_OPENTELEMETRY: 'true'
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'false'
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identity.id
    siteConfig: {
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${appStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  // The host reads its storage, and the Key Vault reference resolves, with these roles in place. The
  // deployment container is named by a variable, not referenced, so Bicep would not order it before the site.
  dependsOn: [deploymentContainer, appStorageBlobOwner, appStorageQueueContributor, appStorageTableContributor, vaultSecretsUser]
}

resource functionAppSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: appSettings
}

// Optional sign-in in front of the site (status page). Event Grid's deliveries and the registry webhook
// authenticate on their own (system key, signature), so their paths stay open to them.
resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = if (enableAuth) {
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'RedirectToLoginPage'
      redirectToProvider: 'azureactivedirectory'
      excludedPaths: [
        '/runtime/webhooks/eventgrid'
        '/api/registry-webhook'
      ]
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: authClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            'api://${authClientId}'
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

output identityPrincipalId string = identity.properties.principalId
output identityClientId string = identity.properties.clientId
output functionAppName string = functionApp.name
output appStorageAccountName string = appStorage.name
output appStorageAccountId string = appStorage.id
output eventsTopicName string = eventsTopic.name
output eventsTopicEndpoint string = eventsTopic.properties.endpoint
output eventsTopicPrincipalId string = eventsTopic.identity.principalId
output keyVaultName string = vault.name
output appInsightsId string = appInsights.id
