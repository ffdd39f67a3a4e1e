// In the resource group of the existing data storage account: the identity's roles on it, and its system topic.
import { builtInRoles } from 'roles.bicep'

param dataStorageAccountName string
param identityPrincipalId string
@description('Containers of the data account Evergreen reads and writes: the landing container first, then any other container a blob retention rule names.')
param containerNames array
param systemTopicName string
@description('Name of the account\'s existing Event Grid system topic (in this resource group) to reuse. Empty: create systemTopicName.')
param existingSystemTopicName string = ''
param tags object

// Blob trigger poison queue (fixed name used by the Functions blob extension).
var poisonQueueName = 'webjobs-blobtrigger-poison'
var reuseSystemTopic = !empty(existingSystemTopicName)

resource dataAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: dataStorageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: dataAccount
  name: 'default'
}

resource dataContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = [for name in containerNames: {
  parent: blobService
  name: name
}]

// Contributor, not Owner: Evergreen reads landed blobs, writes the versions' snapshots (under _evergreen/ of the
// landing container) and deletes what retention retires; it never changes ACLs or ownership (the only extra
// rights of Storage Blob Data Owner). The Functions docs list Owner for the blob trigger because the polling
// trigger keeps receipts/leases; the Event Grid-sourced trigger used here does not poll. Scoped to each
// container Evergreen uses, not the account: the account may hold data Evergreen has no business with.
resource dataBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in containerNames: {
  name: guid(dataContainer[i].id, identityPrincipalId, builtInRoles.storageBlobDataContributor)
  scope: dataContainer[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.storageBlobDataContributor)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: dataAccount
  name: 'default'
}

// "The blob trigger handles failure across multiple retries by writing poison blobs to a queue on the storage
// account specified by the connection" (Functions blob trigger docs). Scoped to that one queue.
resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: poisonQueueName
}

resource poisonQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(poisonQueue.id, identityPrincipalId, builtInRoles.storageQueueDataContributor)
  scope: poisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.storageQueueDataContributor)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// A source can have only one system topic (Defender malware scanning, the portal's Events blade or a second
// Evergreen environment may have made it already): then reuse it by name. Dead-lettering uses the topic's
// system-assigned identity, so a reused topic must have one (the deployment fails on the output otherwise).
resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = if (!reuseSystemTopic) {
  name: systemTopicName
  location: dataAccount.location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    source: dataAccount.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource existingSystemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = if (reuseSystemTopic) {
  name: existingSystemTopicName
}

output systemTopicName string = reuseSystemTopic ? existingSystemTopic!.name : systemTopic!.name
output systemTopicPrincipalId string = reuseSystemTopic ? existingSystemTopic!.identity.principalId : systemTopic!.identity.principalId
