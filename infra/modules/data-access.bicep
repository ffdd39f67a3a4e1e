// In the resource group of the existing data storage account: the identity's roles on it, and its system topic.
import { builtInRoles } from 'roles.bicep'

param dataStorageAccountName string
param identityPrincipalId string
param systemTopicName string
param tags object

// Blob trigger poison queue (fixed name used by the Functions blob extension).
var poisonQueueName = 'webjobs-blobtrigger-poison'

resource dataAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: dataStorageAccountName
}

// Contributor, not Owner: Evergreen reads landed blobs and writes batch files; it never changes ACLs or
// ownership (the only extra rights of Storage Blob Data Owner). The Functions docs list Owner for the blob
// trigger because the polling trigger keeps receipts/leases; the Event Grid-sourced trigger used here does not poll.
resource dataBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataAccount.id, identityPrincipalId, builtInRoles.storageBlobDataContributor)
  scope: dataAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.storageBlobDataContributor)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

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

// A source can have only one system topic; see infra/README.md if the account already has one.
resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: systemTopicName
  location: dataAccount.location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    source: dataAccount.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output systemTopicName string = systemTopic.name
output systemTopicPrincipalId string = systemTopic.identity.principalId
