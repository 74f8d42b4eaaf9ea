output "service_url" {
  description = "Where the envmgr API and web pages are served (runtimes: https://<runtime id>.<runtimes_domain>)."
  value       = "https://${var.control_plane_domain}"
}

output "control_plane_service_account" {
  description = "The identity the control plane runs as."
  value       = google_service_account.control_plane.email
}

output "runtime_service_account" {
  description = "The identity runtime VMs run as."
  value       = google_service_account.runtime.email
}

output "admin_token_secret" {
  description = "Secret Manager secret that holds the admin token."
  value       = google_secret_manager_secret.secrets["admin-token"].secret_id
}

output "database_instance" {
  description = "Cloud SQL instance (PostgreSQL 15, private IP)."
  value       = google_sql_database_instance.db.connection_name
}
