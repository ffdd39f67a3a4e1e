// Built-in role definition ids (the same GUID in every tenant).
// Source: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
// (MicrosoftDocs/azure-docs articles/role-based-access-control/built-in-roles.md).
@export()
var builtInRoles = {
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  eventGridDataSender: 'd5a91429-5739-47e2-a06b-3470a27159e7'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}
