{{- define "atefs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "atefs.labels" -}}
app.kubernetes.io/name: atefs
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "atefs.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "atefs.chainServer" -}}
{{ include "atefs.fullname" . }}-chain-server
{{- end -}}

{{- define "atefs.tlsSecret" -}}
{{- if .Values.tls.existingSecret -}}
{{ .Values.tls.existingSecret }}
{{- else -}}
{{ include "atefs.fullname" . }}-tls
{{- end -}}
{{- end -}}

{{/* Every replica's API address, comma-separated: what clients are given. */}}
{{- define "atefs.servers" -}}
{{- $name := include "atefs.chainServer" . -}}
{{- $ns := .Release.Namespace -}}
{{- $out := list -}}
{{- range $i := until (int .Values.chainServer.replicas) -}}
{{- $out = append $out (printf "%s-%d.%s.%s.svc:7110" $name $i $name $ns) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}
