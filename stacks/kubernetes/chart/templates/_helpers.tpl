{{/* Names and labels shared by the templates. */}}

{{- define "kitaru.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The bootstrap Job's name: a Job's name becomes its pods' job-name label (63 at most), so the
fullname is cut to leave room for the suffix. */}}
{{- define "kitaru.bootstrapJob" -}}
{{- printf "%s-bootstrap-key" (include "kitaru.fullname" . | trunc 49 | trimSuffix "-") -}}
{{- end -}}

{{- define "kitaru.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kitaru.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "kitaru.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The Secret holding the database URL: the user's, or the one this chart makes. */}}
{{- define "kitaru.databaseSecret" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else -}}
{{- printf "%s-database" (include "kitaru.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "kitaru.apiKeySecret" -}}
{{- .Values.apiKeyBootstrap.secretName | default (printf "%s-api-key" (include "kitaru.fullname" .)) -}}
{{- end -}}

{{/* Environment every kitaru container gets: the database URL from its Secret, a writable home. */}}
{{- define "kitaru.env" -}}
- name: KITARU_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "kitaru.databaseSecret" . }}
      key: {{ .Values.database.secretKey }}
- name: KITARU_HOME
  value: /var/lib/kitaru
{{- if .Values.server.stackConfig }}
- name: KITARU_CONFIG
  value: /etc/kitaru/stacks.toml
{{- end }}
{{- end -}}
