// Event Grid subscriptions of one topic, taken from infra/eventgrid-subscriptions.json: the same file the local
// Event Grid (devstack) routes by, so Azure and the local stack cannot drift. Deploy after the function code:
// Event Grid checks the endpoint when a subscription is created, and the blobs_extension key exists only once
// the blob trigger has started.

@allowed(['storage', 'workspace', 'evergreen'])
@description('Which entries of the file belong here (their "topic" field).')
param topicKey string
param topicName string
@description('true for a system topic (storage account, workspace), false for Evergreen\'s custom topic.')
param isSystemTopic bool
param functionAppName string
param functionAppResourceGroupName string
@description('Account holding the dead-letter containers named in the file.')
param deadLetterStorageAccountId string
@description('Landing container of the data account. Storage subjects of the file name the local stack\'s container (its "landingContainer"); this one replaces it.')
param landingContainerName string

var file = loadJsonContent('../eventgrid-subscriptions.json')
var subscriptions = filter(file.subscriptions, s => (s.topic == topicKey))
// Storage subjects start with the container: '/blobServices/default/containers/<container>/...'.
var fileLandingPrefix = '/blobServices/default/containers/${file.landingContainer}/'
var landingPrefix = '/blobServices/default/containers/${landingContainerName}/'

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
  scope: resourceGroup(functionAppResourceGroupName)
}

// Where Event Grid delivers, by the trigger kind of the destination function:
// - eventGridTrigger: endpoint type AzureFunction with the function's resource id; Event Grid then handles the
//   key itself (https://learn.microsoft.com/azure/event-grid/handler-functions).
// - blobTrigger (source EventGrid, the only blob trigger on Flex Consumption): the blobs extension webhook with
//   its system key (https://learn.microsoft.com/azure/azure-functions/functions-event-grid-blob-trigger).
func destinationFor(sub object, appId string, appHost string, blobsExtensionKey string) object => (sub.destination.kind == 'blobTrigger') ? {
  endpointType: 'WebHook'
  properties: {
    endpointUrl: 'https://${appHost}/runtime/webhooks/blobs?functionName=Host.Functions.${sub.destination.function}&code=${blobsExtensionKey}'
  }
} : {
  endpointType: 'AzureFunction'
  properties: {
    resourceId: '${appId}/functions/${sub.destination.function}'
  }
}

// A subject of the file with the file's landing container replaced by the deployed one (oldPrefix empty: as is).
func subjectIn(text string, oldPrefix string, newPrefix string) string => (!empty(oldPrefix) && startsWith(text, oldPrefix)) ? '${newPrefix}${substring(text, length(oldPrefix))}' : text

// Advanced filters on the subject get the same replacement; every other filter is copied through.
func advancedFiltersIn(filters array, oldPrefix string, newPrefix string) array => map(filters, f => ((f.key == 'subject') && contains(f, 'values')) ? union(f, { values: map(f.values, v => subjectIn(v, oldPrefix, newPrefix)) }) : f)

// Every field of a file entry that Event Grid knows, copied through; Azure defaults where the file is silent.
// oldPrefix/newPrefix: the landing-container prefixes of the storage subjects (see subjectIn).
func subscriptionProperties(sub object, destination object, deadLetterAccountId string, oldPrefix string, newPrefix string) object => {
  destination: destination
  eventDeliverySchema: 'EventGridSchema'
  filter: {
    includedEventTypes: sub.filter.includedEventTypes
    subjectBeginsWith: subjectIn(sub.filter.?subjectBeginsWith ?? '', oldPrefix, newPrefix)
    subjectEndsWith: sub.filter.?subjectEndsWith ?? ''
    advancedFilters: advancedFiltersIn(sub.filter.?advancedFilters ?? [], oldPrefix, newPrefix)
  }
  retryPolicy: {
    maxDeliveryAttempts: sub.retryPolicy.maxDeliveryAttempts
    eventTimeToLiveInMinutes: sub.retryPolicy.eventTimeToLiveInMinutes
  }
  // The topic's system-assigned identity writes dead letters (Evergreen's storage has no shared keys).
  deadLetterWithResourceIdentity: (sub.?deadLetter == null) ? null : {
    identity: { type: 'SystemAssigned' }
    deadLetterDestination: {
      endpointType: 'StorageBlob'
      properties: {
        resourceId: deadLetterAccountId
        blobContainerName: sub.deadLetter.container
      }
    }
  }
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = if (isSystemTopic) {
  name: topicName
}

resource customTopic 'Microsoft.EventGrid/topics@2025-02-15' existing = if (!isSystemTopic) {
  name: topicName
}

// The blobs_extension key is looked up only for a blob-trigger entry: ARM evaluates only the taken branch of
// if(), so the workspace and Evergreen modules never call listKeys (a call that fails while the host is still
// starting). The postdeploy hook waits for the key before it provisions the subscriptions.
resource systemTopicSubscriptions 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = [for sub in (isSystemTopic ? subscriptions : []): {
  parent: systemTopic
  name: sub.name
  properties: subscriptionProperties(sub, destinationFor(sub, functionApp.id, functionApp.properties.defaultHostName, (sub.destination.kind == 'blobTrigger') ? listKeys('${functionApp.id}/host/default', '2023-12-01').systemKeys.blobs_extension : ''), deadLetterStorageAccountId, (topicKey == 'storage') ? fileLandingPrefix : '', landingPrefix)
}]

resource customTopicSubscriptions 'Microsoft.EventGrid/topics/eventSubscriptions@2025-02-15' = [for sub in (isSystemTopic ? [] : subscriptions): {
  parent: customTopic
  name: sub.name
  properties: subscriptionProperties(sub, destinationFor(sub, functionApp.id, functionApp.properties.defaultHostName, (sub.destination.kind == 'blobTrigger') ? listKeys('${functionApp.id}/host/default', '2023-12-01').systemKeys.blobs_extension : ''), deadLetterStorageAccountId, (topicKey == 'storage') ? fileLandingPrefix : '', landingPrefix)
}]

output subscriptionNames array = map(subscriptions, s => s.name)
