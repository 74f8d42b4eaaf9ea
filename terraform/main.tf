locals {
  jupyter_port = 8888
  runtime_tag  = "envmgr-runtime"
  services = [
    "compute.googleapis.com", "run.googleapis.com", "sqladmin.googleapis.com",
    "secretmanager.googleapis.com", "servicenetworking.googleapis.com",
    "iam.googleapis.com", "storage.googleapis.com", "certificatemanager.googleapis.com",
    "dns.googleapis.com",
  ]
}

resource "google_project_service" "apis" {
  for_each           = toset(local.services)
  service            = each.value
  disable_on_destroy = false
}

# -- identities --------------------------------------------------------------------------
resource "google_service_account" "control_plane" {
  account_id   = "${var.name}-control-plane"
  display_name = "envmgr control plane"
}

resource "google_service_account" "runtime" {
  account_id   = "${var.name}-runtime"
  display_name = "envmgr runtime VMs"
}

# The least the control plane needs: instances and disks in this project...
resource "google_project_iam_custom_role" "runtimes" {
  role_id = replace("${var.name}_runtimes", "-", "_")
  title   = "envmgr: manage runtime VMs and disks"
  permissions = [
    "compute.instances.create", "compute.instances.delete", "compute.instances.get",
    "compute.instances.list", "compute.instances.start", "compute.instances.stop",
    "compute.instances.resume", "compute.instances.setDiskAutoDelete",
    "compute.instances.setMachineType", "compute.instances.setMetadata",
    "compute.instances.setLabels", "compute.instances.setTags",
    "compute.instances.setServiceAccount", "compute.instances.attachDisk",
    "compute.instances.detachDisk", "compute.disks.create", "compute.disks.delete",
    "compute.disks.get", "compute.disks.list", "compute.disks.use", "compute.disks.setLabels",
    "compute.images.useReadOnly", "compute.subnetworks.use", "compute.zoneOperations.get",
    "compute.zoneOperations.list",
  ]
}

resource "google_project_iam_member" "runtimes" {
  project = var.project
  role    = google_project_iam_custom_role.runtimes.id
  member  = "serviceAccount:${google_service_account.control_plane.email}"
}

# ...acting as the runtime service account (and no other)...
resource "google_service_account_iam_member" "act_as_runtime" {
  service_account_id = google_service_account.runtime.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.control_plane.email}"
}

# ...and workspace buckets (by name prefix) and their objects.
resource "google_project_iam_member" "workspace_buckets" {
  for_each = toset(["roles/storage.admin"])
  project  = var.project
  role     = each.value
  member   = "serviceAccount:${google_service_account.control_plane.email}"
  condition {
    title      = "workspace buckets only"
    expression = "resource.name.startsWith(\"projects/_/buckets/${var.bucket_prefix}\")"
  }
}

# Runtimes get no storage role at all: they reach notebooks only through the control
# plane's runtime API, with a token bound to the runtime, its owner and its workspace.

resource "google_project_iam_member" "sql_client" {
  project = var.project
  role    = "roles/cloudsql.client"
  member  = "serviceAccount:${google_service_account.control_plane.email}"
}

# -- network: runtimes are reachable only from the control plane --------------------------
resource "google_compute_network" "vpc" {
  name                    = "${var.name}-vpc"
  auto_create_subnetworks = false
  depends_on              = [google_project_service.apis]
}

resource "google_compute_subnetwork" "subnet" {
  name                     = "${var.name}-subnet"
  network                  = google_compute_network.vpc.id
  region                   = var.region
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true
}

resource "google_compute_firewall" "control_plane_to_runtimes" {
  name          = "${var.name}-control-plane-to-jupyter"
  network       = google_compute_network.vpc.id
  direction     = "INGRESS"
  source_ranges = [var.subnet_cidr]
  target_tags   = [local.runtime_tag]
  allow {
    protocol = "tcp"
    ports    = [tostring(local.jupyter_port)]
  }
}

resource "google_compute_firewall" "deny_other_ingress" {
  name          = "${var.name}-deny-ingress-to-runtimes"
  network       = google_compute_network.vpc.id
  direction     = "INGRESS"
  priority      = 2000
  source_ranges = ["0.0.0.0/0"]
  target_tags   = [local.runtime_tag]
  deny {
    protocol = "all"
  }
}

resource "google_compute_router" "router" {
  name    = "${var.name}-router"
  network = google_compute_network.vpc.id
  region  = var.region
}

# Runtimes have no public address; they reach package mirrors and GCS through NAT.
resource "google_compute_router_nat" "nat" {
  name                               = "${var.name}-nat"
  router                             = google_compute_router.router.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"
}

# -- PostgreSQL on Cloud SQL, private IP only ---------------------------------------------
resource "google_compute_global_address" "sql_range" {
  name          = "${var.name}-sql-range"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = 20
  network       = google_compute_network.vpc.id
}

resource "google_service_networking_connection" "sql" {
  network                 = google_compute_network.vpc.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.sql_range.name]
}

resource "google_sql_database_instance" "db" {
  name                = "${var.name}-db"
  region              = var.region
  database_version    = "POSTGRES_15"
  deletion_protection = var.deletion_protection
  depends_on          = [google_service_networking_connection.sql]
  settings {
    tier              = var.database_tier
    availability_type = "REGIONAL"
    ip_configuration {
      ipv4_enabled    = false
      private_network = google_compute_network.vpc.id
    }
    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
    }
  }
}

resource "google_sql_database" "envmgr" {
  name     = "envmgr"
  instance = google_sql_database_instance.db.name
}

resource "random_password" "db" {
  length  = 32
  special = false
}

resource "google_sql_user" "envmgr" {
  name     = "envmgr"
  instance = google_sql_database_instance.db.name
  password = random_password.db.result
}

# -- secrets ------------------------------------------------------------------------------
resource "random_password" "admin_token" {
  length  = 48
  special = false
}

resource "random_password" "secret_key" {
  length  = 64
  special = false
}

locals {
  secrets = {
    database-url = "postgresql://envmgr:${random_password.db.result}@${google_sql_database_instance.db.private_ip_address}:5432/envmgr"
    admin-token  = "envmgr_${random_password.admin_token.result}"
    secret-key   = random_password.secret_key.result
  }
}

resource "google_secret_manager_secret" "secrets" {
  for_each  = local.secrets
  secret_id = "${var.name}-${each.key}"
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "secrets" {
  for_each    = local.secrets
  secret      = google_secret_manager_secret.secrets[each.key].id
  secret_data = each.value
}

resource "google_secret_manager_secret_iam_member" "read" {
  for_each  = local.secrets
  secret_id = google_secret_manager_secret.secrets[each.key].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.control_plane.email}"
}

# -- the control plane on Cloud Run -------------------------------------------------------
resource "google_cloud_run_v2_service" "envmgr" {
  name     = var.name
  location = var.region
  ingress  = "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER" # only through domains.tf's HTTPS LB
  template {
    service_account = google_service_account.control_plane.email
    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }
    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = google_compute_network.vpc.id
        subnetwork = google_compute_subnetwork.subnet.id
        tags       = ["${var.name}-control-plane"]
      }
    }
    containers {
      image   = var.image
      command = ["envmgr", "serve"]
      ports {
        container_port = 8080
      }
      resources {
        cpu_idle = false # the worker and autopause run between requests
        limits = {
          cpu    = "2"
          memory = "2Gi"
        }
      }
      dynamic "env" {
        for_each = {
          ENVMGR_HOST                       = "0.0.0.0"
          ENVMGR_PORT                       = "8080"
          ENVMGR_BACKEND                    = "gce"
          ENVMGR_STORAGE                    = "gcs"
          ENVMGR_GCS_PROJECT                = var.project
          ENVMGR_GCE_PROJECT                = var.project
          ENVMGR_GCE_ZONE                   = var.zone
          ENVMGR_GCE_IMAGE                  = var.runtime_image
          ENVMGR_GCE_NETWORK                = google_compute_network.vpc.id
          ENVMGR_GCE_SUBNETWORK             = google_compute_subnetwork.subnet.id
          ENVMGR_GCE_SERVICE_ACCOUNT        = google_service_account.runtime.email
          ENVMGR_DATA_DIR                   = "/tmp/envmgr"
          ENVMGR_DB_POOL_SIZE               = "10"
          ENVMGR_DB_MAX_OVERFLOW            = "10"
          ENVMGR_AUTOPAUSE_INTERVAL_SECONDS = "60"
          ENVMGR_PUBLIC_URL                 = "https://${var.control_plane_domain}"
          ENVMGR_RUNTIMES_DOMAIN            = var.runtimes_domain
          ENVMGR_BUCKET_PREFIX              = var.bucket_prefix
        }
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" {
        for_each = {
          ENVMGR_DATABASE_URL = "database-url"
          ENVMGR_ADMIN_TOKEN  = "admin-token"
          ENVMGR_SECRET_KEY   = "secret-key"
        }
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.secrets[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
      startup_probe {
        http_get {
          path = "/readyz"
        }
        period_seconds    = 5
        failure_threshold = 24
      }
      liveness_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }
  depends_on = [google_secret_manager_secret_iam_member.read, google_project_iam_member.sql_client]
}
