{{- define "rekindle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rekindle.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rekindle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rekindle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rekindle.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rekindle.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "rekindle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rekindle.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where the TLS Secret is mounted. */}}
{{- define "rekindle.tlsDir" -}}/etc/rekindle/tls{{- end }}

{{/*
rekindle.toml: what the chart decides (topics, security without secrets, listener, state
directory, JSON logs, the shutdown grace period), with .Values.config merged over it.
*/}}
{{- define "rekindle.config" -}}
{{- $k := .Values.kafka -}}
{{- $security := dict -}}
{{- with $k.security -}}
{{- if .protocol }}{{- $_ := set $security "protocol" .protocol }}{{- end }}
{{- if .saslMechanism }}{{- $_ := set $security "sasl_mechanism" .saslMechanism }}{{- end }}
{{- if .saslUsername }}{{- $_ := set $security "sasl_username" .saslUsername }}{{- end }}
{{- if .tlsSecret.name }}
{{- if .tlsSecret.caKey }}{{- $_ := set $security "ssl_ca_location" (printf "%s/%s" (include "rekindle.tlsDir" $) .tlsSecret.caKey) }}{{- end }}
{{- if .tlsSecret.certificateKey }}{{- $_ := set $security "ssl_certificate_location" (printf "%s/%s" (include "rekindle.tlsDir" $) .tlsSecret.certificateKey) }}{{- end }}
{{- if .tlsSecret.privateKeyKey }}{{- $_ := set $security "ssl_key_location" (printf "%s/%s" (include "rekindle.tlsDir" $) .tlsSecret.privateKeyKey) }}{{- end }}
{{- end }}
{{- end }}
{{- $kafka := dict "brokers" $k.brokers "group_id" $k.groupId "activity_topic" $k.activityTopic "trigger_topic" $k.triggerTopic "dead_letter_topic" $k.deadLetterTopic "security" $security -}}
{{- if $k.auditTopic }}{{- $_ := set $kafka "audit_topic" $k.auditTopic }}{{- end }}
{{- if $k.changelogTopic }}{{- $_ := set $kafka "changelog_topic" $k.changelogTopic }}{{- end }}
{{- $_ := set $kafka "exactly_once" (default false $k.exactlyOnce) }}
{{- $base := dict "kafka" $kafka "state" (dict "dir" "/var/lib/rekindle/state") "http" (dict "listen" (printf "0.0.0.0:%d" (int .Values.service.port))) "log" (dict "format" "json" "level" .Values.logLevel) "pipeline" (dict "shutdown_grace" (printf "%ds" (int .Values.shutdownGraceSeconds))) -}}
{{- toToml (mustMergeOverwrite $base (deepCopy .Values.config)) -}}
{{- end }}
