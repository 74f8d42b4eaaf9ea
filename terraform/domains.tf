# Two origins: the control plane at var.control_plane_domain, and every runtime on a
# subdomain of var.runtimes_domain (a separate registrable domain), as JupyterHub's
# subdomain_host does. One global HTTPS load balancer serves both from the same Cloud Run
# service, which tells them apart by the Host header; one wildcard certificate covers the
# runtimes.
#
# Sibling runtimes under one registrable domain are one *site* to a browser: SameSite=Lax
# sends a user's runtime cookie along with a request from another user's runtime page.
# envmgr refuses every unsafe request and websocket on a runtime origin whose Origin is not
# that runtime's own; better still, put runtimes_domain on the Public Suffix List (as
# GitHub's githubusercontent.com is), so each runtime is a site of its own to browsers.

resource "google_certificate_manager_dns_authorization" "domains" {
  for_each = {
    control  = var.control_plane_domain
    runtimes = var.runtimes_domain
  }
  name   = "${var.name}-${each.key}"
  domain = each.value
}

resource "google_dns_record_set" "dns_authorization" {
  for_each     = google_certificate_manager_dns_authorization.domains
  managed_zone = each.key == "control" ? var.control_plane_dns_zone : var.runtimes_dns_zone
  name         = each.value.dns_resource_record[0].name
  type         = each.value.dns_resource_record[0].type
  ttl          = 300
  rrdatas      = [each.value.dns_resource_record[0].data]
}

resource "google_certificate_manager_certificate" "envmgr" {
  name = var.name
  managed {
    domains = [var.control_plane_domain, var.runtimes_domain, "*.${var.runtimes_domain}"]
    dns_authorizations = [
      for a in google_certificate_manager_dns_authorization.domains : a.id
    ]
  }
}

resource "google_certificate_manager_certificate_map" "envmgr" {
  name = var.name
}

resource "google_certificate_manager_certificate_map_entry" "hosts" {
  for_each = {
    control  = var.control_plane_domain
    runtimes = "*.${var.runtimes_domain}"
  }
  name         = "${var.name}-${each.key}"
  map          = google_certificate_manager_certificate_map.envmgr.name
  certificates = [google_certificate_manager_certificate.envmgr.id]
  hostname     = each.value
}

resource "google_compute_region_network_endpoint_group" "envmgr" {
  name                  = var.name
  region                = var.region
  network_endpoint_type = "SERVERLESS"
  cloud_run {
    service = google_cloud_run_v2_service.envmgr.name
  }
}

resource "google_compute_backend_service" "envmgr" {
  name                  = var.name
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"
  backend {
    group = google_compute_region_network_endpoint_group.envmgr.id
  }
}

resource "google_compute_url_map" "envmgr" {
  name            = var.name
  default_service = google_compute_backend_service.envmgr.id
}

resource "google_compute_target_https_proxy" "envmgr" {
  name            = var.name
  url_map         = google_compute_url_map.envmgr.id
  certificate_map = "//certificatemanager.googleapis.com/${google_certificate_manager_certificate_map.envmgr.id}"
}

resource "google_compute_global_address" "envmgr" {
  name = var.name
}

resource "google_compute_global_forwarding_rule" "envmgr" {
  name                  = var.name
  load_balancing_scheme = "EXTERNAL_MANAGED"
  target                = google_compute_target_https_proxy.envmgr.id
  ip_address            = google_compute_global_address.envmgr.address
  port_range            = "443"
}

resource "google_dns_record_set" "hosts" {
  for_each = {
    control  = { zone = var.control_plane_dns_zone, name = "${var.control_plane_domain}." }
    runtimes = { zone = var.runtimes_dns_zone, name = "*.${var.runtimes_domain}." }
  }
  managed_zone = each.value.zone
  name         = each.value.name
  type         = "A"
  ttl          = 300
  rrdatas      = [google_compute_global_address.envmgr.address]
}
