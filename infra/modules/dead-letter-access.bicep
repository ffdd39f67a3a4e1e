// Lets each topic's system-assigned identity write dead letters, and nothing else: Storage Blob Data
// Contributor on each dead-letter container (the role Event Grid documents for a Blob destination:
// https://learn.microsoft.com/azure/event-grid/add-identity-roles). Identity-based dead-lettering is required
// because Evergreen's storage account has shared keys disabled.
import { builtInRoles } from 'roles.bicep'

param storageAccountName string
param topicPrincipalIds array

var deadLetterContainers = union(map(filter(loadJsonContent('../eventgrid-subscriptions.json').subscriptions, s => contains(s, 'deadLetter')), s => s.deadLetter.container), [])

resource appStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: appStorage
  name: 'default'
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = [for name in deadLetterContainers: {
  parent: blobService
  name: name
}]

// One assignment per (container, topic identity).
resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for pair in flatten(map(range(0, length(deadLetterContainers)), c => map(topicPrincipalIds, p => { c: c, p: p }))): {
  name: guid(container[pair.c].id, pair.p, builtInRoles.storageBlobDataContributor)
  scope: container[pair.c]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.storageBlobDataContributor)
    principalId: pair.p
    principalType: 'ServicePrincipal'
  }
}]
