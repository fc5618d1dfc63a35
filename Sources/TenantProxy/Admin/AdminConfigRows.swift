/// SHOW CONFIG: every setting in force as key, value and whether RELOAD changes it. Secrets are
/// shown only as "(set)" or "".
enum AdminConfigRows {
    static func rows(_ config: ProxyConfig) -> [[String?]] {
        var rows: [[String?]] = []
        func add(_ key: String, _ value: Any, reloadable: Bool) {
            rows.append([key, "\(value)", reloadable ? "yes" : "restart"])
        }
        func secret(_ value: String?) -> String { value == nil || value == "" ? "" : "(set)" }

        add("server.listen_host", config.server.listenHost, reloadable: false)
        add("server.listen_port", config.server.listenPort, reloadable: false)
        add("server.max_message_bytes", config.server.maxMessageBytes, reloadable: true)
        add("server.max_client_connections", config.server.maxClientConnections, reloadable: false)
        add("server.shutdown_timeout_seconds", config.server.shutdownTimeoutSeconds, reloadable: true)
        add("server.login_timeout_seconds", config.server.loginTimeoutSeconds, reloadable: true)
        add("server.event_loop_threads", config.server.eventLoopThreads, reloadable: false)
        add("server.reuse_port", config.server.reusePort, reloadable: false)
        add("server.tcp_keepalive", config.server.keepalive.enabled, reloadable: false)
        add("server.tcp_keepalive_idle_seconds", config.server.keepalive.idleSeconds, reloadable: false)
        add("server.tcp_keepalive_interval_seconds", config.server.keepalive.intervalSeconds, reloadable: false)
        add("server.tcp_keepalive_count", config.server.keepalive.count, reloadable: false)
        add("server.instance_id", config.server.instanceID, reloadable: false)
        add("server.cancel_port", config.server.cancelPort, reloadable: false)
        add("peers", config.peers.map { "\($0.instanceID)=\($0.host):\($0.port)" }.joined(separator: ","), reloadable: true)
        add("tls.cert_file", config.tls.certFile, reloadable: true)
        add("tls.key_file", config.tls.keyFile, reloadable: true)
        add("tls.client_ca_file", config.tls.clientCAFile, reloadable: true)
        add("tls.require", config.tls.require, reloadable: true)
        add("tls.min_version", config.tls.minVersion, reloadable: true)
        add("tls.sni_domain", config.tls.sniDomain, reloadable: true)
        add("auth.trust_loopback", config.auth.trustLoopback, reloadable: true)
        add("auth.failure_delay_ms", config.auth.failureDelayMilliseconds, reloadable: true)
        add("auth.lockout_failures", config.auth.lockoutFailures, reloadable: false)
        add("auth.lockout_window_seconds", config.auth.lockoutWindowSeconds, reloadable: false)
        add("auth.lockout_seconds", config.auth.lockoutSeconds, reloadable: false)
        add("auth.rules", config.auth.rules.count, reloadable: true)
        add("tenancy.map_file", config.tenancy.mapFile, reloadable: false)
        add("tenancy.tenant_setting", config.tenancy.tenantSetting, reloadable: false)
        add("tenancy.user_setting", config.tenancy.userSetting, reloadable: false)
        add("tenancy.user_separator", config.tenancy.userSeparator, reloadable: true)
        add("tenancy.lookup_upstream", config.tenancy.lookupUpstream, reloadable: true)
        add("tenancy.lookup_cache_seconds", config.tenancy.lookupCacheSeconds, reloadable: true)
        for name in config.clusters.keys.sorted() {
            let cluster = config.clusters[name]!
            let section = name == "default" ? "upstream" : "clusters.\(name)"
            add("\(section).host", cluster.host, reloadable: true)
            add("\(section).port", cluster.port, reloadable: true)
            add("\(section).user", cluster.user, reloadable: true)
            add("\(section).password", secret(cluster.password), reloadable: true)
            add("\(section).global_user", cluster.globalUser ?? "", reloadable: true)
            add("\(section).global_password", secret(cluster.globalPassword), reloadable: true)
            add("\(section).database", cluster.database, reloadable: true)
            add("\(section).connect_timeout_seconds", cluster.connectTimeoutSeconds, reloadable: true)
            add("\(section).tls", cluster.tls.rawValue, reloadable: true)
            add("\(section).tls_ca_file", cluster.tlsCAFile, reloadable: true)
            add("\(section).tls_server_name", cluster.tlsServerName, reloadable: true)
        }
        add("pool.mode", config.pool.mode.rawValue, reloadable: true)
        add("pool.database_modes", config.pool.databaseModes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.rawValue)" }
            .joined(separator: ","), reloadable: true)
        add("pool.size", config.pool.size, reloadable: true)
        add("pool.max_client_wait_seconds", config.pool.maxClientWaitSeconds, reloadable: true)
        add("pool.idle_timeout_seconds", config.pool.idleTimeoutSeconds, reloadable: false)
        add("pool.server_lifetime_seconds", config.pool.serverLifetimeSeconds, reloadable: true)
        add("pool.idle_transaction_timeout_seconds", config.pool.idleTransactionTimeoutSeconds, reloadable: true)
        add("pool.tenant_max_connections", config.pool.tenantMaxConnections, reloadable: true)
        add("pool.tenant_max_clients", config.pool.tenantMaxClients, reloadable: true)
        add("pool.track_extra_parameters", config.pool.trackExtraParameters.joined(separator: ","), reloadable: false)
        add("metrics.listen_host", config.metrics.listenHost, reloadable: false)
        add("metrics.listen_port", config.metrics.listenPort, reloadable: false)
        add("metrics.max_tenant_labels", config.metrics.maxTenantLabels, reloadable: false)
        add("admin.users", config.admin.users.joined(separator: ","), reloadable: true)
        add("log.level", config.log.level, reloadable: false)
        add("log.format", config.log.format, reloadable: false)
        if let jwt = config.jwt {
            add("jwt.jwks_file", jwt.jwksFile ?? "", reloadable: false)
            add("jwt.jwks_url", jwt.jwksURL ?? "", reloadable: false)
            add("jwt.jwks_refresh_seconds", jwt.jwksRefreshSeconds, reloadable: false)
            add("jwt.unknown_kid_refetch_seconds", jwt.unknownKidRefetchMinimumSeconds, reloadable: false)
            add("jwt.hs256_secret", jwt.hs256Secret == nil ? "" : "(set)", reloadable: false)
            add("jwt.issuer", jwt.issuer ?? "", reloadable: false)
            add("jwt.audience", jwt.audience ?? "", reloadable: false)
            add("jwt.leeway_seconds", jwt.leewaySeconds, reloadable: false)
            add("jwt.tenant_claim", jwt.tenantClaim, reloadable: false)
            add("jwt.user_claim", jwt.userClaim, reloadable: false)
        }
        return rows
    }
}
