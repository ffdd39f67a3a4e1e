// In the resource group of the existing Azure ML workspace: the identity's role on it, and its system topic.
import { builtInRoles } from 'roles.bicep'

param workspaceName string
param identityPrincipalId string
param systemTopicName string
param tags object

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

// Data assets, jobs, models, online endpoints and deployments of this workspace only. It does not allow
// creating computes or workspace connections, or assigning roles (see infra/README.md).
resource workspaceDataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, identityPrincipalId, builtInRoles.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.azureMLDataScientist)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: systemTopicName
  location: workspace.location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    source: workspace.id
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

output systemTopicName string = systemTopic.name
output systemTopicPrincipalId string = systemTopic.identity.principalId
