{{/* Chart name. */}}
{{- define "aurora.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every resource. */}}
{{- define "aurora.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of one service's resources: <fullname>-<service>. Call with (dict "root" $ "name" $name). */}}
{{- define "aurora.serviceFullname" -}}
{{- printf "%s-%s" (include "aurora.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "aurora.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "aurora.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aurora
{{- end }}

{{/* Selector labels of one service. Call with (dict "root" $ "name" $name). */}}
{{- define "aurora.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aurora.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* Labels of one service's resources. Call with (dict "root" $ "name" $name). */}}
{{- define "aurora.serviceLabels" -}}
{{ include "aurora.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* What each service needs (the contract): a YAML map of service -> list. approvalKeys: the
public keys that verify an approved device action; approvalSigner: the key that signs one;
federationKeys: the site's federation signing key and its peers' public keys. */}}
{{- define "aurora.needs" -}}
mqtt-bridge: [redis, mqtt, approvalKeys]
device-registry: [redis, database, jwt, http, approvalKeys]
ws-gateway: [redis, jwt, http, approvalSigner]
federation-gateway: [redis, nats, federationKeys]
eve-ingest: [redis, nats]
{{- end }}

{{/* Whether service .name needs .what: "true" or "". */}}
{{- define "aurora.needs.has" -}}
{{- $needs := include "aurora.needs" .root | fromYaml }}
{{- if has .what (index $needs .name) }}true{{ end }}
{{- end }}

{{/* Whether any enabled service needs .what: "true" or "". */}}
{{- define "aurora.anyNeeds" -}}
{{- $root := .root }}
{{- $what := .what }}
{{- $needs := include "aurora.needs" $root | fromYaml }}
{{- range $name, $svc := $root.Values.services }}
{{- if and $svc.enabled (has $what (index $needs $name)) }}true{{ end }}
{{- end }}
{{- end }}

{{/* Name of the Secret the chart creates. */}}
{{- define "aurora.secretName" -}}
{{- printf "%s-credentials" (include "aurora.fullname" .) }}
{{- end }}

{{/* Secret to read a credential from: existingSecret, else the chart's (which must then be created). */}}
{{- define "aurora.credentialSecret" -}}
{{- if .existing }}
{{- .existing }}
{{- else if .root.Values.secrets.create }}
{{- include "aurora.secretName" .root }}
{{- else }}
{{- fail (printf "%s: no Secret to read the credential from: set %s.existingSecret to a Secret you manage, or secrets.create=true to create one from the %s.* values" .what .what .what) }}
{{- end }}
{{- end }}

{{/* Image of one service: [<registry>/]aurora/<service>:<tag>, the scheme of deploy/README.md
(Image names; scripts/check_image_names.py). Call with (dict "root" $ "svc" $svc). */}}
{{- define "aurora.image" -}}
{{- $tag := .svc.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- if .root.Values.image.registry }}
{{- printf "%s/%s:%s" (.root.Values.image.registry | trimSuffix "/") .svc.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .svc.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Service account name of one service. Call with (dict "root" $ "name" $name "svc" $svc). */}}
{{- define "aurora.serviceAccountName" -}}
{{- if .svc.serviceAccount.create }}
{{- default (include "aurora.serviceFullname" .) .svc.serviceAccount.name }}
{{- else }}
{{- default "default" .svc.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: longer than the drain. */}}
{{- define "aurora.terminationGracePeriodSeconds" -}}
{{- add .Values.aurora.shutdownTimeoutSeconds .Values.aurora.preStopSleepSeconds .Values.aurora.terminationGraceExtraSeconds }}
{{- end }}
