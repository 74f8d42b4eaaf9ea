variable "project" {
  description = "GCP project that runs the control plane, its database and the runtimes."
  type        = string
}

variable "region" {
  description = "Region of Cloud Run, Cloud SQL and the subnet."
  type        = string
  default     = "us-central1"
}

variable "zone" {
  description = "Zone where runtime VMs and their persistent disks are created."
  type        = string
  default     = "us-central1-a"
}

variable "image" {
  description = "Container image of the control plane (a build of this repository running `envmgr serve`)."
  type        = string
}

variable "name" {
  description = "Prefix of every resource this module creates."
  type        = string
  default     = "envmgr"
}

variable "subnet_cidr" {
  description = "Range of the subnet shared by the control plane (direct VPC egress) and the runtimes."
  type        = string
  default     = "10.20.0.0/20"
}

variable "database_tier" {
  description = "Cloud SQL machine tier."
  type        = string
  default     = "db-custom-1-3840"
}

variable "runtime_image" {
  description = "Boot image of runtime VMs."
  type        = string
  default     = "projects/debian-cloud/global/images/family/debian-12"
}

variable "bucket_prefix" {
  description = "Workspace buckets the control plane may create and use start with this."
  type        = string
  default     = "envmgr-"
}

variable "min_instances" {
  description = "Cloud Run minimum instances (at least 1: the worker and autopause run inside the service)."
  type        = number
  default     = 1
}

variable "max_instances" {
  description = "Cloud Run maximum instances (replicas coordinate through PostgreSQL)."
  type        = number
  default     = 3
}

variable "deletion_protection" {
  description = "Protect the database from `terraform destroy`."
  type        = bool
  default     = true
}

variable "control_plane_domain" {
  description = "Where people reach the control plane (e.g. envmgr.example.org): the pages, the API and the /proxy path for API clients."
  type        = string
}

variable "control_plane_dns_zone" {
  description = "Cloud DNS managed zone (name) that holds control_plane_domain."
  type        = string
}

variable "runtimes_domain" {
  description = "Runtimes are served at <runtime id>.<runtimes_domain>. Must not be a subdomain of control_plane_domain's site: use a separate registrable domain (e.g. example-notebooks.org), so no runtime can set or read cookies of the control plane. Ideally on the Public Suffix List, so sibling runtimes are different sites to browsers (see domains.tf)."
  type        = string
}

variable "runtimes_dns_zone" {
  description = "Cloud DNS managed zone (name) that holds runtimes_domain and its wildcard record."
  type        = string
}
