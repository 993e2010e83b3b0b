{{/* Names, labels and the small decisions every template shares. */}}

{{- define "characterflywheel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "characterflywheel.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "characterflywheel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "characterflywheel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: characterflywheel
{{- end }}

{{/* Selector labels; the component is `operator` or `exporter`. Call with (dict "ctx" . "component" "operator"). */}}
{{- define "characterflywheel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "characterflywheel.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "characterflywheel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "characterflywheel.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: by digest when one is given, else by tag (appVersion by default). */}}
{{- define "characterflywheel.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Namespaces the operator serves when it is namespaced: the list, or the release namespace. */}}
{{- define "characterflywheel.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- toYaml (uniq .Values.watch.namespaces) }}
{{- else }}
{{- toYaml (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{- define "characterflywheel.operatorService" -}}
{{- printf "%s-operator" (include "characterflywheel.fullname" .) }}
{{- end }}

{{- define "characterflywheel.exporterName" -}}
{{- printf "%s-exporter" (include "characterflywheel.fullname" .) }}
{{- end }}

{{/* The exporter's snapshot claim: the user's, or the one the chart creates. */}}
{{- define "characterflywheel.exporterClaim" -}}
{{- default (printf "%s-snapshot" (include "characterflywheel.exporterName" .)) .Values.exporter.persistence.existingClaim }}
{{- end }}

{{/* The Secret with the exporter writers' bearer token (key `token`): the user's, or the one the chart creates. */}}
{{- define "characterflywheel.exporterTokenSecret" -}}
{{- default (printf "%s-writer" (include "characterflywheel.exporterName" .)) .Values.exporter.auth.existingSecret }}
{{- end }}

{{/*
checkov skips as resource annotations, each with its reason (the values that cause them say so in values.yaml).
Call with (dict "ctx" . "extra" (list "CKV_…=reason")).
*/}}
{{- define "characterflywheel.checkovSkips" -}}
{{- $skips := .extra }}
{{- if not .ctx.Values.image.digest }}
{{- $skips = append $skips "CKV_K8S_43=no digest exists before a release is built; set image.digest to pin one" }}
{{- if ne .ctx.Values.image.pullPolicy "Always" }}
{{- $skips = append $skips "CKV_K8S_15=a release tag names one image, pulled once per node; set image.digest to pin it" }}
{{- end }}
{{- end }}
{{- range $i, $skip := $skips }}
checkov.io/skip{{ add $i 1 }}: {{ $skip | quote }}
{{- end }}
{{- end }}

{{/*
Only the verbs the operator uses (docs/operator.md, "RBAC"). kopf runs with scanning disabled, so it needs no
cluster-wide read of CustomResourceDefinitions or Namespaces; API discovery is open to every authenticated user.
*/}}
{{- define "characterflywheel.rules" -}}
{{- /* Exactly the requests the operator makes (tests/operator/test_rbac.py records them in the emulator). */ -}}
- apiGroups: [characterflywheel.io]
  resources: [flywheelgenerations]
  verbs: [get, list, watch, patch]
- apiGroups: [characterflywheel.io]
  resources: [flywheelgenerations/status]
  verbs: [patch]
# Children are created with ownerReferences.blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
- apiGroups: [characterflywheel.io]
  resources: [flywheelgenerations/finalizers]
  verbs: [update]
# delete: a generation that ends stops its still-running Jobs (a failed stage's sibling reward models).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, list, watch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [serving.kserve.io]
  resources: [inferenceservices]
  verbs: [create, get, patch]
# Flywheels (kube/flywheel.py): read them and write their status; create their generations (owned by the
# Flywheel, blockOwnerDeletion) and delete those past spec.historyLimit.
- apiGroups: [characterflywheel.io]
  resources: [flywheels]
  verbs: [get, list, watch, patch]
- apiGroups: [characterflywheel.io]
  resources: [flywheels/status]
  verbs: [patch]
- apiGroups: [characterflywheel.io]
  resources: [flywheels/finalizers]
  verbs: [update]
- apiGroups: [characterflywheel.io]
  resources: [flywheelgenerations]
  verbs: [create, delete]
{{- end }}

{{/* The serving runtime's name: the value, else `<fullname>-chat` (unique per release). */}}
{{- define "characterflywheel.servingRuntimeName" -}}
{{- if .Values.servingRuntime.name }}
{{- .Values.servingRuntime.name }}
{{- else if .Values.servingRuntime.create }}
{{- printf "%s-chat" (include "characterflywheel.fullname" .) }}
{{- else }}
{{- fail "servingRuntime.name is required when servingRuntime.create is false: the name of the (Cluster)ServingRuntime your InferenceServices use" }}
{{- end }}
{{- end }}

