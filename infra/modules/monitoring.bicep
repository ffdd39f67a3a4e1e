// Azure Monitor for Evergreen: an action group (e-mail), log alert rules over Evergreen's spans, and a workbook.
// The spans are the handlers' OpenTelemetry spans in Application Insights (the `requests`/`dependencies` tables),
// their attributes in customDimensions under the names of shared/domain/telemetry.py (`Attr`). tests/infra/
// test_monitoring.py checks that every query names only those attributes, and only ones the code sets.

@description('Region of the alert rules and the workbook.')
param location string

@description('Tags of every resource.')
param tags object

@description('Seeds resource names.')
param resourceToken string

@description('Resource id of Evergreen\'s Application Insights component: the alert rules\' scope and the workbook\'s source.')
param appInsightsId string

@description('E-mail address the alerts go to. Empty: the alert rules fire (visible in Azure Monitor) but notify nobody.')
param alertEmail string = ''

// Spans from the handlers: the Functions host exports some as requests, the worker's own as dependencies.
var spans = 'union requests, dependencies'

// One rule per condition that needs a person. `query` returns one row per occurrence; a rule fires when the
// rows of its window are more than 0.
var alertRules = [
  {
    name: 'dead-letters'
    displayName: 'Evergreen: events dead-lettered'
    description: 'Event Grid gave up delivering events to Evergreen (dead letters > 0). Replay them with `python -m shared.cli redrive list|replay`.'
    severity: 2
    query: '${spans} | where toint(customDimensions["evergreen.dead_letters"]) > 0 | project timestamp, name, dead_letters = toint(customDimensions["evergreen.dead_letters"])'
  }
  {
    name: 'retraining-failed'
    displayName: 'Evergreen: a retraining run failed'
    description: 'A retraining pipeline job ended Failed or Canceled. See the job in Azure ML studio, and `python -m shared.cli lineage <dataset>:<version>`.'
    severity: 2
    query: '${spans} | where tolower(tostring(customDimensions["evergreen.job_status"])) in ("failed", "canceled", "cancelled") | project timestamp, name, job = tostring(customDimensions["evergreen.job"]), dataset = tostring(customDimensions["evergreen.dataset"])'
  }
  {
    name: 'rollout-rolled-back'
    displayName: 'Evergreen: a rollout was rolled back'
    description: 'A candidate model was rolled back (the champion serves again). `python -m shared.cli lineage <model>:<version>` shows why.'
    severity: 2
    query: '${spans} | where tostring(customDimensions["evergreen.rollout_phase"]) == "rolled_back" | project timestamp, name, endpoint = tostring(customDimensions["evergreen.endpoint"]), model = tostring(customDimensions["evergreen.model"])'
  }
  {
    name: 'stuck-work'
    displayName: 'Evergreen: stuck work'
    description: 'The reconciler found overdue work (an expired lease, a lost message or event) and re-drove it. If it repeats, see `python -m shared.cli status`.'
    severity: 3
    query: '${spans} | where toint(customDimensions["evergreen.stuck"]) > 0 | project timestamp, name, stuck = toint(customDimensions["evergreen.stuck"])'
  }
  {
    name: 'retention-errors'
    displayName: 'Evergreen: retention errors'
    description: 'A retention run could not apply some of its actions. `python -m shared.cli audit --kind retention.failed` lists them.'
    severity: 3
    query: '${spans} | where toint(customDimensions["evergreen.retention_errors"]) > 0 | project timestamp, name, errors = toint(customDimensions["evergreen.retention_errors"])'
  }
]

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-evergreen-${resourceToken}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'evergreen'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource alerts 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in alertRules: {
  name: 'alert-evergreen-${rule.name}-${resourceToken}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: rule.displayName
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [appInsightsId]
    // A 15-minute window read every 5 minutes tolerates ingestion delay; muting for the window keeps one span
    // from notifying three times.
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    muteActionsDuration: 'PT15M'
    autoMitigate: false
    criteria: {
      allOf: [
        {
          query: rule.query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: empty(alertEmail) ? [] : [actionGroup.id]
    }
  }
}]

// The workbook: the status page's views over the telemetry (infra/workbook.json, Notebook/1.0).
resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(appInsightsId, 'evergreen-workbook')
  location: location
  tags: union(tags, { 'hidden-title': 'Evergreen' })
  kind: 'shared'
  properties: {
    displayName: 'Evergreen'
    category: 'workbook'
    sourceId: appInsightsId
    serializedData: loadTextContent('../workbook.json')
  }
}

output alertRuleNames array = [for (rule, i) in alertRules: alerts[i].name]
output workbookId string = workbook.id
