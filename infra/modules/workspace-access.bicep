// In the resource group of the existing Azure ML workspace: the identity's role on it, and its system topic.
import { builtInRoles } from 'roles.bicep'

param workspaceName string
param identityPrincipalId string
param systemTopicName string
@description('Name of the workspace\'s existing Event Grid system topic (in this resource group) to reuse. Empty: create systemTopicName.')
param existingSystemTopicName string = ''
param tags object

var reuseSystemTopic = !empty(existingSystemTopicName)

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

// One system topic per source: reuse the workspace's own if it has one (it needs a system-assigned identity,
// which writes the dead letters; the deployment fails on the output otherwise).
resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = if (!reuseSystemTopic) {
  name: systemTopicName
  location: workspace.location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    source: workspace.id
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

resource existingSystemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = if (reuseSystemTopic) {
  name: existingSystemTopicName
}

output systemTopicName string = reuseSystemTopic ? existingSystemTopic!.name : systemTopic!.name
output systemTopicPrincipalId string = reuseSystemTopic ? existingSystemTopic!.identity.principalId : systemTopic!.identity.principalId
