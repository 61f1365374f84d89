{{/* The release's name for its objects: "sluice" unless overridden. */}}
{{- define "sluice.fullname" -}}
{{- if contains "sluice" .Release.Name -}}
{{- .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-sluice" .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.operator" -}}
{{- printf "%s-operator" (include "sluice.fullname" .) -}}
{{- end -}}

{{- define "sluice.labels" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "sluice.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "sluice.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (default .Chart.AppVersion .Values.sidecar.image.tag) -}}
{{- end -}}

{{- define "sluice.tlsSecret" -}}
{{- printf "%s-tls" (include "sluice.operator" .) -}}
{{- end -}}

{{/* Namespaces the injector never touches. */}}
{{- define "sluice.excludedNamespaces" -}}
{{- $all := concat (list "kube-system" .Release.Namespace) .Values.injector.excludeNamespaces | uniq -}}
{{- toJson $all -}}
{{- end -}}

{{/* The in-chart Redis (sharedState.deploy). */}}
{{- define "sluice.redis" -}}
{{- printf "%s-redis" (include "sluice.fullname" .) -}}
{{- end -}}

{{/* The shared state's URL: the user's, or the in-chart Redis's. */}}
{{- define "sluice.sharedStateUrl" -}}
{{- if .Values.sharedState.url -}}
{{- .Values.sharedState.url -}}
{{- else if .Values.sharedState.deploy -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "sluice.redis" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The Secret (key `password`) sidecars mount from their own namespace. */}}
{{- define "sluice.sharedStateSecret" -}}
{{- if .Values.sharedState.existingSecret -}}
{{- .Values.sharedState.existingSecret -}}
{{- else if .Values.sharedState.deploy -}}
{{- include "sluice.redis" . -}}
{{- end -}}
{{- end -}}
