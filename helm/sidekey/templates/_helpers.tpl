{{/* Name of every object of the release. */}}
{{- define "sidekey.fullname" -}}
{{- if contains "sidekey" .Release.Name -}}
{{- printf "%s-injector" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-sidekey-injector" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sidekey.labels" -}}
app.kubernetes.io/name: sidekey-injector
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sidekey.selectorLabels" -}}
app.kubernetes.io/name: sidekey-injector
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sidekey.injectorImage" -}}
{{- printf "%s:%s" .Values.injector.image.repository (default .Chart.AppVersion .Values.injector.image.tag) -}}
{{- end -}}

{{- define "sidekey.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (default .Chart.AppVersion .Values.sidecar.image.tag) -}}
{{- end -}}

{{- define "sidekey.tlsSecret" -}}
{{- printf "%s-tls" (include "sidekey.fullname" .) -}}
{{- end -}}

{{/* The Service's DNS name, the certificate's subject. */}}
{{- define "sidekey.serviceHost" -}}
{{- printf "%s.%s.svc" (include "sidekey.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* Namespaces never injected. */}}
{{- define "sidekey.excludedNamespaces" -}}
{{- $ns := list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace -}}
{{- concat $ns .Values.webhook.excludedNamespaces | uniq | toJson -}}
{{- end -}}
