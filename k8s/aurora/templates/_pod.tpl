{{/*
  What the pods of the chart share: the image reference with its digest, the labels and
  annotations, the scheduling defaults, the credentials and TLS files of the dependencies.
*/}}

{{/* The image of one service, pulled by digest when one is set. Call with (dict "root" $ "svc" $svc). */}}
{{- define "aurora.imageRef" -}}
{{- include "aurora.image" . }}{{ with .svc.image.digest }}@{{ . }}{{ end }}
{{- end }}

{{/* Labels of one service's pods: podLabels, the service's podLabels, then the chart's own (which win). Call with $ctx. */}}
{{- define "aurora.podLabels" -}}
{{- $labels := merge (include "aurora.serviceLabels" . | fromYaml) (deepCopy (.svc.podLabels | default dict)) (deepCopy (.root.Values.podLabels | default dict)) }}
{{- toYaml $labels }}
{{- end }}

{{/* The affinity of one service: its own, plus the podAntiAffinityPreset unless it sets podAntiAffinity. Call with $ctx. */}}
{{- define "aurora.affinity" -}}
{{- $affinity := deepCopy (.svc.affinity | default dict) }}
{{- $preset := .root.Values.podAntiAffinityPreset }}
{{- if and (ne $preset "none") (not (hasKey $affinity "podAntiAffinity")) }}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "aurora.selectorLabels" . | fromYaml)) }}
{{- if eq $preset "hard" }}
{{- $_ := set $affinity "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term)) }}
{{- else }}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) }}
{{- end }}
{{- end }}
{{- if $affinity }}
{{- toYaml $affinity }}
{{- end }}
{{- end }}

{{/* The dependencies with TLS files for service .name: a YAML list (mqtt, nats, redis, postgresql). Call with (dict "root" $ "name" $name). */}}
{{- define "aurora.tls.deps" -}}
{{- $needs := index (include "aurora.needs" .root | fromYaml) .name }}
{{- $tls := .root.Values.tls }}
{{- $deps := list }}
{{- if and $tls.mqtt.enabled (has "mqtt" $needs) }}{{ $deps = append $deps "mqtt" }}{{ end }}
{{- if and $tls.nats.enabled (has "nats" $needs) }}{{ $deps = append $deps "nats" }}{{ end }}
{{- if and $tls.redis.enabled (has "redis" $needs) }}{{ $deps = append $deps "redis" }}{{ end }}
{{- if and $tls.postgresql.enabled (has "database" $needs) }}{{ $deps = append $deps "postgresql" }}{{ end }}
{{- toYaml $deps }}
{{- end }}

{{/* Checks the TLS values against the URLs they go with. Call with $. */}}
{{- define "aurora.tls.check" -}}
{{- $tls := .Values.tls }}
{{- if and $tls.mqtt.enabled (not (regexMatch "^(mqtts|ssl)://" .Values.mqtt.url)) }}
{{- fail (printf "tls.mqtt.enabled: mqtt.url must be mqtts://... (mqtt-bridge refuses TLS files with a plain URL), not %s" .Values.mqtt.url) }}
{{- end }}
{{- if and $tls.redis.enabled (not .Values.redis.existingSecret) (not (regexMatch "^rediss(\\+sentinel)?://" .Values.redis.url)) }}
{{- fail (printf "tls.redis.enabled: redis.url must be rediss://... or rediss+sentinel://..., not %s" .Values.redis.url) }}
{{- end }}
{{- end }}

{{/* Environment variables pointing the services at the TLS files. Call with (dict "root" $ "deps" list). */}}
{{- define "aurora.tls.env" -}}
{{- $tls := .root.Values.tls }}
{{- range .deps }}
{{- $dir := printf "/etc/aurora/tls/%s" . }}
{{- $cfg := index $tls . }}
{{- if eq . "mqtt" }}
- name: AURORA_MQTT_BRIDGE_MQTT_CA_FILE
  value: {{ printf "%s/ca.crt" $dir | quote }}
{{- if $cfg.clientCertificate }}
- name: AURORA_MQTT_BRIDGE_MQTT_CLIENT_CERT
  value: {{ printf "%s/tls.crt" $dir | quote }}
- name: AURORA_MQTT_BRIDGE_MQTT_CLIENT_KEY
  value: {{ printf "%s/tls.key" $dir | quote }}
{{- end }}
{{- else if eq . "nats" }}
- name: AURORA_NATS_TLS_CA
  value: {{ printf "%s/ca.crt" $dir | quote }}
{{- if $cfg.clientCertificate }}
- name: AURORA_NATS_TLS_CERT
  value: {{ printf "%s/tls.crt" $dir | quote }}
- name: AURORA_NATS_TLS_KEY
  value: {{ printf "%s/tls.key" $dir | quote }}
{{- end }}
{{- else if eq . "redis" }}
# The trust store of the process's rustls-native-certs users (the redis crate's TLS): only
# this file, not the system's roots.
- name: SSL_CERT_FILE
  value: {{ printf "%s/ca.crt" $dir | quote }}
{{- else if eq . "postgresql" }}
- name: PGSSLMODE
  value: {{ $cfg.sslMode | quote }}
- name: PGSSLROOTCERT
  value: {{ printf "%s/ca.crt" $dir | quote }}
{{- if $cfg.clientCertificate }}
- name: PGSSLCERT
  value: {{ printf "%s/tls.crt" $dir | quote }}
- name: PGSSLKEY
  value: {{ printf "%s/tls.key" $dir | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volume mounts of the TLS files. Call with (dict "root" $ "deps" list). */}}
{{- define "aurora.tls.mounts" -}}
{{- range .deps }}
- name: {{ printf "tls-%s" . }}
  mountPath: {{ printf "/etc/aurora/tls/%s" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Volumes of the TLS files, from the Secrets named in tls.<dependency>.existingSecret. Call with (dict "root" $ "deps" list). */}}
{{- define "aurora.tls.volumes" -}}
{{- $tls := .root.Values.tls }}
{{- range .deps }}
{{- $cfg := index $tls . }}
- name: {{ printf "tls-%s" . }}
  secret:
    secretName: {{ required (printf "tls.%s.existingSecret is required when tls.%s.enabled is true" . .) $cfg.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $cfg.caKey }}
        path: ca.crt
      {{- if $cfg.clientCertificate }}
      - key: {{ $cfg.certKey }}
        path: tls.crt
      - key: {{ $cfg.keyKey }}
        path: tls.key
      {{- end }}
{{- end }}
{{- end }}

{{/* AURORA_REDIS_URL from a Secret, when redis.existingSecret is set. Call with $. */}}
{{- define "aurora.redisUrl.env" -}}
{{- with .Values.redis.existingSecret }}
- name: AURORA_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.redis.existingSecretKey }}
{{- end }}
{{- end }}

{{/* The NATS credentials (nats.auth). Call with $. */}}
{{- define "aurora.natsAuth.env" -}}
{{- $natsAuth := .Values.nats.auth }}
{{- if ne $natsAuth.method "none" }}
{{- $natsSecret := include "aurora.credentialSecret" (dict "root" . "existing" $natsAuth.existingSecret "what" "nats.auth") }}
{{- if eq $natsAuth.method "userPassword" }}
- name: AURORA_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ $natsSecret }}
      key: {{ $natsAuth.keys.user }}
- name: AURORA_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $natsSecret }}
      key: {{ $natsAuth.keys.password }}
{{- else if eq $natsAuth.method "token" }}
- name: AURORA_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $natsSecret }}
      key: {{ $natsAuth.keys.token }}
{{- else if eq $natsAuth.method "nkey" }}
- name: AURORA_NATS_NKEY
  valueFrom:
    secretKeyRef:
      name: {{ $natsSecret }}
      key: {{ $natsAuth.keys.nkey }}
{{- else if eq $natsAuth.method "creds" }}
- name: AURORA_NATS_CREDS
  value: /etc/aurora/nats/nats.creds
{{- end }}
{{- end }}
{{- end }}

{{/* The volume of the NATS .creds file (nats.auth.method=creds). Call with $. */}}
{{- define "aurora.natsCreds.volume" -}}
- name: nats-creds
  secret:
    secretName: {{ include "aurora.credentialSecret" (dict "root" . "existing" .Values.nats.auth.existingSecret "what" "nats.auth") }}
    defaultMode: 0440
    items:
      - key: {{ .Values.nats.auth.keys.creds }}
        path: nats.creds
{{- end }}

{{/* AURORA_DEVICE_REGISTRY_DATABASE_URL from its Secret. Call with (dict "root" $ "secret" name). */}}
{{- define "aurora.databaseUrl.env" -}}
- name: AURORA_DEVICE_REGISTRY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .root.Values.database.urlKey }}
{{- end }}

{{/* Whether device-registry starts with --skip-migrations: "true" or "". Call with $. */}}
{{- define "aurora.skipMigrations" -}}
{{- if or .Values.migrations.job.enabled .Values.migrations.skipAtStart }}true{{ end }}
{{- end }}

{{/* The Secret with ws-gateway's approval signing key: approvals.signingKey.existingSecret,
else the chart's Secret when approvals.signingKey.value is set (secrets.create must be on);
"" = no key (approvals of device actions are answered 503). Call with $. */}}
{{- define "aurora.approvalSigningKey.secret" -}}
{{- $key := .Values.approvals.signingKey }}
{{- if $key.existingSecret }}
{{- $key.existingSecret }}
{{- else if $key.value }}
{{- include "aurora.credentialSecret" (dict "root" . "existing" "" "what" "approvals.signingKey") }}
{{- end }}
{{- end }}

{{/* The approval settings of service .name (docs/configuration.md): the privileged actions and
the public keys for mqtt-bridge and device-registry, the signing key file for ws-gateway. Call
with (dict "root" $ "name" $name). */}}
{{- define "aurora.approvals.env" -}}
{{- $approvals := .root.Values.approvals }}
{{- $prefix := printf "AURORA_%s" (.name | upper | replace "-" "_") }}
{{- if include "aurora.needs.has" (dict "root" .root "name" .name "what" "approvalKeys") }}
# Actions that run only with an approval signed by one of the public keys ("" = none).
- name: {{ printf "%s_PRIVILEGED_ACTIONS" $prefix }}
  value: {{ join "," $approvals.privilegedActions | quote }}
{{- with $approvals.publicKeys }}
- name: {{ printf "%s_APPROVAL_PUBLIC_KEYS" $prefix }}
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}
{{- if and (include "aurora.needs.has" (dict "root" .root "name" .name "what" "approvalSigner")) (include "aurora.approvalSigningKey.secret" .root) }}
- name: {{ printf "%s_APPROVAL_SIGNING_KEY" $prefix }}
  value: /etc/aurora/approval/signing.key
{{- end }}
{{- end }}

{{/* The volume of ws-gateway's approval signing key. Call with $. */}}
{{- define "aurora.approvalSigningKey.volume" -}}
- name: approval-signing-key
  secret:
    secretName: {{ include "aurora.approvalSigningKey.secret" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.approvals.signingKey.key }}
        path: signing.key
{{- end }}

{{/* federation-gateway's keys (values federation) and legacy subjects, for a service that
needs federationKeys. Call with (dict "root" $ "name" $name). */}}
{{- define "aurora.federation.env" -}}
{{- if include "aurora.needs.has" (dict "root" .root "name" .name "what" "federationKeys") }}
{{- $fed := .root.Values.federation }}
{{- if $fed.signingKey.existingSecret }}
# This site's key: every export is signed (federation.signingKey).
- name: AURORA_FEDERATION_GATEWAY_SIGNING_KEY
  value: /etc/aurora/federation/signing/signing.key
{{- end }}
{{- if $fed.peerKeys.existingSecret }}
# The peer sites' public keys: only what they signed is imported (federation.peerKeys).
- name: AURORA_FEDERATION_GATEWAY_PEER_KEYS
  value: /etc/aurora/federation/peers
{{- end }}
{{- with $fed.legacySubjects }}
- name: AURORA_FEDERATION_GATEWAY_LEGACY_SUBJECTS
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The mounts of federation-gateway's keys. Call with (dict "root" $ "name" $name). */}}
{{- define "aurora.federation.mounts" -}}
{{- if include "aurora.needs.has" (dict "root" .root "name" .name "what" "federationKeys") }}
{{- $fed := .root.Values.federation }}
{{- if $fed.signingKey.existingSecret }}
- name: federation-signing-key
  mountPath: /etc/aurora/federation/signing
  readOnly: true
{{- end }}
{{- if $fed.peerKeys.existingSecret }}
- name: federation-peer-keys
  mountPath: /etc/aurora/federation/peers
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* The volumes of federation-gateway's keys, from their Secrets. Call with (dict "root" $
"name" $name). */}}
{{- define "aurora.federation.volumes" -}}
{{- if include "aurora.needs.has" (dict "root" .root "name" .name "what" "federationKeys") }}
{{- $fed := .root.Values.federation }}
{{- if $fed.signingKey.existingSecret }}
- name: federation-signing-key
  secret:
    secretName: {{ $fed.signingKey.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $fed.signingKey.key }}
        path: signing.key
{{- end }}
{{- if $fed.peerKeys.existingSecret }}
- name: federation-peer-keys
  secret:
    secretName: {{ $fed.peerKeys.existingSecret }}
    defaultMode: 0444
{{- end }}
{{- end }}
{{- end }}
