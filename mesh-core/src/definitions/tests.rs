use super::*;
use proptest::prelude::*;
use serde_json::json;

fn msg<T: std::fmt::Debug>(r: Result<T, DefinitionError>) -> String {
    r.expect_err("expected an error").to_string()
}

/// The sample payload of `PUT /v1/agent/service/register` in Consul's API
/// docs (PascalCase).
fn api_docs_service() -> Value {
    json!({
        "ID": "redis1",
        "Name": "redis",
        "Tags": ["primary", "v1"],
        "Address": "127.0.0.1",
        "Port": 8000,
        "Meta": {"redis_version": "4.0"},
        "EnableTagOverride": false,
        "Check": {
            "DeregisterCriticalServiceAfter": "90m",
            "Args": ["/usr/local/bin/check_redis.py"],
            "Interval": "10s",
            "Timeout": "5s"
        },
        "Weights": {"Passing": 10, "Warning": 1}
    })
}

fn expected_redis() -> ServiceDefinition {
    ServiceDefinition {
        id: "redis1".into(),
        name: "redis".into(),
        tags: vec!["primary".into(), "v1".into()],
        address: "127.0.0.1".into(),
        meta: [("redis_version".to_string(), "4.0".to_string())].into(),
        port: Some(8000),
        weights: Some(Weights {
            passing: 10,
            warning: 1,
        }),
        check: Some(CheckDefinition {
            deregister_critical_service_after_ms: Some(90 * 60_000),
            args: vec!["/usr/local/bin/check_redis.py".into()],
            interval_ms: Some(10_000),
            timeout_ms: Some(5_000),
            ..CheckDefinition::default()
        }),
        ..ServiceDefinition::default()
    }
}

/// Renames every key of `v` (outside `Meta`) with `f`.
fn rekey(v: &Value, f: &dyn Fn(&str) -> String) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if k == "Meta" { v.clone() } else { rekey(v, f) };
                    (f(k), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| rekey(x, f)).collect()),
        other => other.clone(),
    }
}

fn snake(k: &str) -> String {
    // "EnableTagOverride" -> "enable_tag_override", "ID" -> "id".
    let mut out = String::new();
    let chars: Vec<char> = k.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 && !chars[i - 1].is_uppercase() {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

#[test]
fn service_every_casing() {
    let pascal = api_docs_service();
    let want = expected_redis();
    assert_eq!(decode_service(&pascal).unwrap(), want);
    let lower = rekey(&pascal, &|k| k.to_lowercase());
    assert_eq!(decode_service(&lower).unwrap(), want);
    let upper = rekey(&pascal, &|k| k.to_uppercase());
    assert_eq!(decode_service(&upper).unwrap(), want);
    let snake_case = rekey(&pascal, &snake);
    assert!(snake_case.get("enable_tag_override").is_some());
    assert!(snake_case["check"]
        .get("deregister_critical_service_after")
        .is_some());
    assert_eq!(decode_service(&snake_case).unwrap(), want);
    // Mixed: ScriptArgs and script_args are Args.
    for alias in ["ScriptArgs", "script_args", "args", "ARGS"] {
        let mut v = pascal.clone();
        let check = v["Check"].as_object_mut().unwrap();
        let args = check.remove("Args").unwrap();
        check.insert(alias.into(), args);
        assert_eq!(decode_service(&v).unwrap(), want, "{alias}");
    }
}

/// The services configuration reference's JSON (snake_case, as in files).
#[test]
fn service_config_docs_snake_case() {
    let v = json!({
        "name": "redis",
        "address": "192.0.2.10",
        "port": 80,
        "enable_tag_override": true,
        "tagged_addresses": {
            "lan": {"address": "192.0.2.10", "port": 80},
            "lan_ipv6": {"address": "2001:db8:1:2:cafe::1337", "port": 80}
        },
        "weights": {"passing": 3, "warning": 2, "critical": 1},
        "checks": [{
            "id": "chk",
            "service_id": "ignored-by-checks()",
            "http": "http://localhost/health",
            "tls_skip_verify": true,
            "interval": "10s",
            "success_before_passing": 2,
            "failures_before_critical": 3
        }]
    });
    let s = decode_service(&v).unwrap();
    assert_eq!(s.name, "redis");
    assert!(s.enable_tag_override);
    assert_eq!(
        s.weights,
        Some(Weights {
            passing: 3,
            warning: 2
        })
    );
    let c = &s.checks[0];
    assert_eq!(c.service_id, "ignored-by-checks()");
    assert!(c.tls_skip_verify);
    assert_eq!(
        (c.success_before_passing, c.failures_before_critical),
        (2, 3)
    );
    assert_eq!(c.kind().unwrap(), CheckKind::Http);
    let ns = s.to_node_service();
    assert_eq!(
        (ns.id.as_str(), ns.service.as_str(), ns.port),
        ("redis", "redis", 80)
    );
    let checks = s.checks();
    assert_eq!(checks[0].service_id, "redis");
    assert_eq!(checks[0].id, "chk");
}

#[test]
fn meta_keys_are_data() {
    let v = json!({"Name": "web", "Meta": {"Some_Key": "v", "UPPER": "x", "a_b_c": "y"}});
    let s = decode_service(&v).unwrap();
    let keys: Vec<&str> = s.meta.keys().map(String::as_str).collect();
    assert_eq!(keys, ["Some_Key", "UPPER", "a_b_c"]);
    // Same under the snake_case spelling and inside a sidecar.
    let v = json!({"name": "web", "meta": {"Some_Key": "v"},
                   "connect": {"sidecar_service": {"meta": {"Other_Key": "w"}}}});
    let s = decode_service(&v).unwrap();
    assert!(s.meta.contains_key("Some_Key"));
    assert!(s.sidecar().unwrap().meta.contains_key("Other_Key"));
    // Headers keep their names.
    let c = decode_check(&json!({"Name": "h", "HTTP": "http://x", "Interval": "1s",
        "Header": {"X-Custom_Header": ["a", "b"]}}))
    .unwrap();
    assert_eq!(c.header["X-Custom_Header"], ["a", "b"]);
    // Meta must be strings; bad keys are refused as Consul does.
    assert_eq!(
        msg(decode_service(&json!({"Name": "w", "Meta": {"k": 1}}))),
        "Request decode failed: Meta[\"k\"]: expected a string, got 1"
    );
    assert!(
        msg(decode_service(&json!({"Name": "w", "Meta": {"a b": "c"}})))
            .starts_with("Invalid Service Meta: Couldn't load metadata pair ('a b', 'c')")
    );
    assert!(msg(decode_service(
        &json!({"Name": "w", "Meta": {"consul-x": "c"}})
    ))
    .contains("reserved for internal use"));
}

#[test]
fn normalization_rules() {
    assert_eq!(
        normalize_key("DeregisterCriticalServiceAfter"),
        "deregistercriticalserviceafter"
    );
    assert_eq!(
        normalize_key("deregister_critical_service_after"),
        "deregistercriticalserviceafter"
    );
    assert_eq!(normalize_key("service_id"), normalize_key("ServiceID"));
    let n = normalize_keys(&json!({"A_b": [{"C": 1}], "NodeMeta": {"K_k": {"X": 1}}}));
    assert_eq!(n, json!({"ab": [{"c": 1}], "nodemeta": {"K_k": {"X": 1}}}));
    // Unknown fields are ignored; null is absent.
    let s =
        decode_service(&json!({"Name": "w", "Bogus": [1, {"x": 2}], "Port": null, "Tags": null}))
            .unwrap();
    assert_eq!((s.port, s.tags.len()), (None, 0));
}

#[test]
fn wrong_types_name_the_field() {
    assert_eq!(
        msg(decode_service(&json!({"Name": "w", "Port": "abc"}))),
        "Request decode failed: Port: expected a number, got \"abc\""
    );
    assert_eq!(
        msg(decode_service(&json!({"name": "w", "port": 70000}))),
        "Request decode failed: Port: expected a number from 0 to 65535, got 70000"
    );
    assert_eq!(
        msg(decode_service(&json!({"Name": "w", "Port": 80.5}))),
        "Request decode failed: Port: expected a number, got 80.5"
    );
    assert_eq!(
        decode_service(&json!({"Name": "w", "Port": 80.0}))
            .unwrap()
            .port,
        Some(80)
    );
    assert_eq!(
        msg(decode_service(&json!({"Name": 5}))),
        "Request decode failed: Name: expected a string, got 5"
    );
    assert_eq!(
        msg(decode_service(&json!({"Name": "w", "Tags": ["a", 2]}))),
        "Request decode failed: Tags[1]: expected a string, got 2"
    );
    assert_eq!(
        msg(decode_service(
            &json!({"Name": "w", "Checks": [{"TTL": "1s"}, {"Interval": true}]})
        )),
        "Request decode failed: Checks[1].Interval: expected a duration such as \"10s\", got true"
    );
    assert_eq!(
        msg(decode_service(
            &json!({"Name": "w", "Check": {"TTL": "ten"}})
        )),
        "Request decode failed: Check.TTL: time: invalid duration \"ten\""
    );
    assert_eq!(
        msg(decode_service(
            &json!({"Name": "w", "EnableTagOverride": "true"})
        )),
        "Request decode failed: EnableTagOverride: expected true or false, got \"true\""
    );
    assert_eq!(
        msg(decode_service(&json!([1]))),
        "Request decode failed: expected an object, got [1]"
    );
    assert_eq!(
        msg(decode_service(&json!({"Port": 1}))),
        "Missing service name"
    );
    assert!(msg(parse_body(b"{")).starts_with("Request decode failed: "));
}

#[test]
fn check_kinds() {
    let c = |v: Value| decode_check(&v);
    assert_eq!(
        c(json!({"Name": "t", "TTL": "30s"}))
            .unwrap()
            .kind()
            .unwrap(),
        CheckKind::Ttl
    );
    assert_eq!(
        c(json!({"name": "h", "http": "http://x", "interval": "5s"}))
            .unwrap()
            .kind()
            .unwrap(),
        CheckKind::Http
    );
    assert_eq!(
        c(json!({"NAME": "t", "TCP": "localhost:22", "INTERVAL": "5s"}))
            .unwrap()
            .kind()
            .unwrap(),
        CheckKind::Tcp
    );
    assert_eq!(
        c(json!({"Name": "s", "script_args": ["/bin/true"], "Interval": "5s"}))
            .unwrap()
            .kind()
            .unwrap(),
        CheckKind::Script
    );
    // ID aliases; ID defaults to the name.
    for key in ["ID", "CheckID", "check_id", "id", "checkid"] {
        let check = c(json!({"Name": "n", key: "the-id", "TTL": "1s"})).unwrap();
        assert_eq!(check.id, "the-id", "{key}");
    }
    assert_eq!(c(json!({"Name": "n", "TTL": "1s"})).unwrap().id, "n");
    // ServiceID aliases.
    for key in ["ServiceID", "service_id", "serviceid", "SERVICE_ID"] {
        let check = c(json!({"Name": "n", key: "web", "TTL": "1s"})).unwrap();
        assert_eq!(check.service_id, "web", "{key}");
    }
    // Full HTTP check from the checks reference.
    let h = c(json!({
        "id": "api", "name": "HTTP API on port 5000",
        "http": "https://localhost:5000/health", "tls_skip_verify": false,
        "method": "POST", "header": {"Content-Type": ["application/json"]},
        "body": "{\"method\":\"health\"}", "disable_redirects": true,
        "interval": "10s", "timeout": "1s", "status": "passing", "notes": "n"
    }))
    .unwrap();
    assert_eq!(h.method.as_deref(), Some("POST"));
    assert_eq!(h.body.as_deref(), Some("{\"method\":\"health\"}"));
    assert_eq!((h.interval_ms, h.timeout_ms), (Some(10_000), Some(1_000)));
    let row = h.to_health_check("node1");
    assert_eq!(row.status, CheckStatus::Passing);
    assert_eq!(
        (
            row.node.as_str(),
            row.check_id.as_str(),
            row.r#type.as_str()
        ),
        ("node1", "api", "http")
    );
    assert_eq!(row.notes, "n");
    let t = c(json!({"Name": "t", "TTL": "1s"}))
        .unwrap()
        .to_health_check("n");
    assert_eq!(
        (t.status, t.r#type.as_str()),
        (CheckStatus::Critical, "ttl")
    );
}

#[test]
fn check_validation_errors() {
    let e = |v: Value| msg(decode_check(&v));
    assert_eq!(e(json!({"TTL": "1s"})), "Missing check name");
    assert_eq!(
        e(json!({"Name": "x"})),
        "Invalid check: TTL must be > 0 for TTL checks"
    );
    assert_eq!(
        e(json!({"Name": "x", "TTL": "0s"})),
        "Invalid check: TTL must be > 0 for TTL checks"
    );
    assert_eq!(
        e(json!({"Name": "x", "HTTP": "http://x"})),
        "Invalid check: Interval must be > 0 for Script, HTTP, or TCP checks"
    );
    assert_eq!(
        e(json!({"Name": "x", "TTL": "1s", "Interval": "1s"})),
        "Invalid check: Interval and TTL cannot both be specified"
    );
    assert_eq!(
        e(json!({"Name": "x", "HTTP": "http://x", "TCP": "a:1", "Interval": "1s"})),
        "Invalid check: only one of TTL, HTTP, TCP or Args may be set, got HTTP and TCP"
    );
    assert_eq!(
        e(json!({"Name": "x", "TTL": "1s", "Status": "ok"})),
        "Status for checks must 'passing', 'warning', 'critical', got \"ok\""
    );
    assert!(e(json!({"Name": "x", "GRPC": "a:1", "Interval": "1s"}))
        .contains("GRPC checks are not supported"));
    assert!(e(json!({"Name": "x", "alias_service": "web"}))
        .contains("AliasService checks are not supported"));
    assert_eq!(
        msg(decode_check(
            &json!({"Name": "x", "TTL": "1s", "Header": {"A": "b"}})
        )),
        "Request decode failed: Header[\"A\"]: expected a list of strings, got \"b\""
    );
    // Service checks are validated too, with the same texts.
    assert_eq!(
        msg(decode_service(
            &json!({"Name": "w", "Check": {"HTTP": "http://x"}})
        )),
        "Invalid check: Interval must be > 0 for Script, HTTP, or TCP checks"
    );
    // An empty Check object is no check, as in Consul.
    assert_eq!(
        decode_service(&json!({"Name": "w", "Check": {}}))
            .unwrap()
            .check,
        None
    );
}

#[test]
fn durations() {
    let ms = |s: &str| parse_go_duration(s).map(ns_to_ms);
    assert_eq!(ms("10s"), Ok(Some(10_000)));
    assert_eq!(ms("1m30s"), Ok(Some(90_000)));
    assert_eq!(ms("500ms"), Ok(Some(500)));
    assert_eq!(ms("1.5h"), Ok(Some(5_400_000)));
    assert_eq!(ms("2h45m0.5s"), Ok(Some(9_900_500)));
    assert_eq!(ms("1500us"), Ok(Some(2)));
    assert_eq!(ms("1µs"), Ok(Some(1)));
    assert_eq!(ms(".5s"), Ok(Some(500)));
    assert_eq!(ms("0"), Ok(None));
    assert_eq!(ms("-5s"), Ok(None));
    assert_eq!(
        ms("10"),
        Err("time: missing unit in duration \"10\"".into())
    );
    assert_eq!(
        ms("10x"),
        Err("time: unknown unit \"x\" in duration \"10x\"".into())
    );
    assert_eq!(ms(""), Err("time: invalid duration \"\"".into()));
    assert_eq!(ms("s"), Err("time: invalid duration \"s\"".into()));
    assert_eq!(
        ms("9999999999999999999h"),
        Err("time: invalid duration \"9999999999999999999h\"".into())
    );
    assert_eq!(parse_go_duration("1h1m1s1ms1us1ns"), Ok(3_661_001_001_001));
    // Numbers are nanoseconds, as in Consul's CheckType JSON decoding.
    let c = decode_check(&json!({"Name": "t", "TTL": 15_000_000_000u64})).unwrap();
    assert_eq!(c.ttl_ms, Some(15_000));
    let c = decode_check(&json!({"Name": "t", "TTL": 1.5e9})).unwrap();
    assert_eq!(c.ttl_ms, Some(1_500));
}

#[test]
fn service_checks_ids_and_names() {
    let one = decode_service(&json!({"Name": "web", "Check": {"TTL": "1s"}})).unwrap();
    let c = one.checks();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].id.as_str(), c[0].name.as_str()),
        ("service:web", "Service 'web' check")
    );
    assert_eq!(c[0].service_id, "web");
    let many = decode_service(&json!({"Name": "web", "ID": "web1",
        "Check": {"TTL": "1s"},
        "Checks": [{"TTL": "1s", "Name": "custom"}, {"TTL": "1s", "CheckID": "mine"}]}))
    .unwrap();
    let c = many.checks();
    let ids: Vec<&str> = c.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["service:web1:1", "service:web1:2", "mine"]);
    assert_eq!(c[1].name, "custom");
    assert!(c.iter().all(|c| c.service_id == "web1"));
    let rows: Vec<HealthCheck> = c.iter().map(|c| c.to_health_check("n1")).collect();
    assert_eq!(rows[2].check_id, "mine");
    assert_eq!(rows[0].service_id, "web1");
}

#[test]
fn node_service_defaults_and_validation() {
    let s = decode_service(&json!({"Name": "web"})).unwrap();
    let ns = s.to_node_service();
    assert_eq!(ns.id, "web");
    assert_eq!(
        ns.weights,
        Weights {
            passing: 1,
            warning: 1
        }
    );
    assert_eq!(
        decode_service(&json!({"Name": "w", "Weights": {"Passing": 5}}))
            .unwrap()
            .weights,
        Some(Weights {
            passing: 5,
            warning: 1
        })
    );
    assert_eq!(
        msg(decode_service(
            &json!({"Name": "w", "Weights": {"Passing": 0}})
        )),
        "Invalid Weights: Passing must be greater than 0"
    );
    assert_eq!(
        msg(decode_service(&json!({"Name": "w", "Address": "0.0.0.0"}))),
        "Invalid service address"
    );
    assert!(msg(decode_service(
        &json!({"Name": "w", "Kind": "mesh-gateway"})
    ))
    .contains("not supported"));
    assert!(msg(decode_service(
        &json!({"Name": "p", "Kind": "connect-proxy", "Port": 1})
    ))
    .contains("DestinationServiceName must be non-empty"));
    let p = decode_service(&json!({"Name": "p", "Kind": "connect-proxy", "Port": 21000,
        "Proxy": {"DestinationServiceName": "web", "destination_service_id": "web1",
                  "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9000}]}}))
    .unwrap();
    let ns = p.to_node_service();
    let proxy = ns.proxy.unwrap();
    assert_eq!(proxy.destination_service_id, "web1");
    assert_eq!(proxy.upstreams[0].destination_type, "service");
    assert_eq!(proxy.upstreams[0].local_bind_port, 9000);
}

#[test]
fn sidecar_defaults() {
    let s = decode_service(&json!({
        "name": "web", "port": 8080, "tags": ["v1"], "meta": {"env": "prod"},
        "connect": {"sidecar_service": {}}
    }))
    .unwrap();
    let side = s.sidecar().unwrap();
    assert_eq!(side.id, "web-sidecar-proxy");
    assert_eq!(side.name, "web-sidecar-proxy");
    assert_eq!(side.kind, "connect-proxy");
    assert_eq!(side.port, Some(DEFAULT_SIDECAR_PORT));
    assert_eq!(side.tags, ["v1"]);
    assert_eq!(side.meta["env"], "prod");
    let proxy = side.proxy.clone().unwrap();
    assert_eq!(proxy.destination_service_name, "web");
    assert_eq!(proxy.destination_service_id, "web");
    assert_eq!(proxy.local_service_address, "127.0.0.1");
    assert_eq!(proxy.local_service_port, 8080);
    assert!(proxy.upstreams.is_empty());
    assert!(side.checks().is_empty(), "no default sidecar checks");
    let ns = side.to_node_service();
    assert_eq!((ns.id.as_str(), ns.port), ("web-sidecar-proxy", 9191));

    // Given values win, except the id and kind.
    let s = decode_service(&json!({
        "Name": "web", "ID": "web-1", "Port": 8080,
        "Connect": {"SidecarService": {
            "ID": "ignored", "Name": "my-proxy", "Port": 21000,
            "Proxy": {"Upstreams": [
                {"destination_name": "db", "local_bind_port": 9001, "local_bind_address": "127.0.0.2"}
            ]},
            "Checks": [{"TCP": "127.0.0.1:21000", "Interval": "10s"}]
        }}
    }))
    .unwrap();
    let side = s.sidecar().unwrap();
    assert_eq!(
        (side.id.as_str(), side.name.as_str()),
        ("web-1-sidecar-proxy", "my-proxy")
    );
    assert_eq!(side.port, Some(21000));
    let proxy = side.proxy.clone().unwrap();
    assert_eq!(proxy.destination_service_id, "web-1");
    assert_eq!(proxy.upstreams.len(), 1);
    assert_eq!(proxy.upstreams[0].destination_name, "db");
    assert_eq!(proxy.upstreams[0].local_bind_address, "127.0.0.2");
    let checks = side.checks();
    assert_eq!(checks[0].id, "service:web-1-sidecar-proxy");
    assert_eq!(checks[0].kind().unwrap(), CheckKind::Tcp);

    assert_eq!(
        decode_service(&json!({"Name": "web"})).unwrap().sidecar(),
        None
    );
    assert!(msg(decode_service(
        &json!({"Name": "w", "Connect": {"Native": true, "SidecarService": {}}})
    ))
    .contains("Connect native"));
    assert!(msg(decode_service(
        &json!({"Name": "w", "Connect": {"SidecarService":
        {"Connect": {"SidecarService": {}}}}})
    ))
    .contains("nested SidecarService"));
    assert!(msg(decode_service(
        &json!({"Name": "w", "Connect": {"SidecarService":
        {"Proxy": {"Upstreams": [{"DestinationName": "db"}]}}}})
    ))
    .contains("needs a LocalBindPort"));
}

#[test]
fn catalog_register() {
    let r = decode_catalog_register(&json!({
        "Datacenter": "dc1",
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "foobar",
        "Address": "192.168.10.10",
        "TaggedAddresses": {"lan": "192.168.10.10", "wan_ipv4": "10.0.10.10"},
        "NodeMeta": {"somekey": "somevalue", "Some_Key": "v"},
        "Service": {
            "ID": "redis1", "Service": "redis", "Tags": ["primary", "v1"],
            "Address": "127.0.0.1", "TaggedAddresses": {"lan": {"address": "127.0.0.1", "port": 8000}},
            "Meta": {"redis_version": "4.0"}, "Port": 8000
        },
        "Check": {
            "Node": "foobar", "CheckID": "service:redis1", "Name": "Redis health check",
            "Notes": "Script based health check", "Status": "passing", "ServiceID": "redis1",
            "Definition": {"TCP": "localhost:8888", "Interval": "5s"}
        },
        "SkipNodeUpdate": false
    }))
    .unwrap();
    assert_eq!(r.node.node, "foobar");
    assert_eq!(r.node.datacenter, "dc1");
    assert_eq!(r.node.tagged_addresses["wan_ipv4"], "10.0.10.10");
    assert_eq!(r.node.meta["Some_Key"], "v");
    let s = r.service.unwrap();
    assert_eq!(
        (s.id.as_str(), s.service.as_str(), s.port),
        ("redis1", "redis", 8000)
    );
    assert_eq!(r.checks.len(), 1);
    assert_eq!(r.checks[0].status, CheckStatus::Passing);
    assert_eq!(r.checks[0].node, "foobar");

    // snake_case, defaults.
    let r = decode_catalog_register(&json!({
        "node": "n", "address": "1.2.3.4", "skip_node_update": true,
        "service": {"service": "web"},
        "checks": [{"name": "c1"}, {"check_id": "c2", "service_id": "web"}]
    }))
    .unwrap();
    assert!(r.skip_node_update);
    assert_eq!(r.service.unwrap().id, "web");
    assert_eq!(r.checks[0].check_id, "c1");
    assert_eq!(r.checks[0].status, CheckStatus::Critical);
    assert_eq!(r.checks[1].service_id, "web");

    let e = |v: Value| msg(decode_catalog_register(&v));
    assert_eq!(e(json!({"Address": "a"})), "Must provide node");
    assert_eq!(
        e(json!({"Node": "n"})),
        "Must provide address if SkipNodeUpdate is not set"
    );
    assert!(decode_catalog_register(&json!({"Node": "n", "SkipNodeUpdate": true})).is_ok());
    assert_eq!(
        e(json!({"Node": "n", "Address": "a", "Service": {"ID": "x"}})),
        "Must provide service name with ID"
    );
    assert_eq!(
        e(json!({"Node": "n", "Address": "a", "Check": {}})),
        "Must provide check ID"
    );
    assert!(
        e(json!({"Node": "n", "Address": "a", "Check": {"Node": "m", "Name": "c"}}))
            .contains("does not match")
    );
    assert_eq!(
        e(json!({"Node": "n", "Address": "a", "Service": {"Service": "s", "Port": "80"}})),
        "Request decode failed: Service.Port: expected a number, got \"80\""
    );
}

#[test]
fn catalog_deregister() {
    assert_eq!(
        decode_catalog_deregister(&json!({"Node": "n", "ServiceID": "s"})).unwrap(),
        ("n".to_string(), Some("s".to_string()), None)
    );
    assert_eq!(
        decode_catalog_deregister(&json!({"node": "n", "check_id": "c", "ServiceID": ""})).unwrap(),
        ("n".to_string(), None, Some("c".to_string()))
    );
    assert_eq!(
        msg(decode_catalog_deregister(&json!({"ServiceID": "s"}))),
        "Must provide node"
    );
}

#[test]
fn config_json_and_merge() {
    let a = AgentFileConfig::parse(
        "00-base.json",
        r#"{
          "node_name": "n1", "server": true, "bootstrap_expect": 3,
          "retry_join": ["10.0.0.1"], "data_dir": "/var/mesh", "datacenter": "dc1",
          "ports": {"http": 8500, "dns": 8600, "serf_lan": 8301},
          "enable_script_checks": false,
          "connect": {"enabled": true},
          "service": {"name": "web", "port": 80},
          "check": {"id": "mem", "name": "Memory", "args": ["/bin/check_mem"], "interval": "10s"},
          "unknown_key": {"whatever": 1}
        }"#,
    )
    .unwrap();
    assert_eq!(a.node_name.as_deref(), Some("n1"));
    assert_eq!(a.ports.serf_lan, Some(8301));
    assert_eq!(a.connect_enabled, Some(true));
    assert_eq!(a.services.len(), 1);
    assert_eq!(a.checks[0].kind().unwrap(), CheckKind::Script);
    let b = AgentFileConfig::parse(
        "10-more.json",
        r#"{
          "node_name": "n2", "retry_join": ["10.0.0.2"], "log_level": "debug",
          "ports": {"http": 18500},
          "services": [{"name": "api", "port": 81}, {"name": "db"}],
          "checks": [{"name": "disk", "ttl": "1m"}]
        }"#,
    )
    .unwrap();
    let m = a.merge(b);
    assert_eq!(m.node_name.as_deref(), Some("n2"));
    assert_eq!(m.server, Some(true));
    assert_eq!(m.bootstrap_expect, Some(3));
    assert_eq!(m.retry_join, ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(m.ports.http, Some(18500));
    assert_eq!(m.ports.dns, Some(8600));
    assert_eq!(m.log_level.as_deref(), Some("debug"));
    let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "api", "db"]);
    let checks: Vec<&str> = m.checks.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(checks, ["mem", "disk"]);
    assert_eq!(m.connect_enabled, Some(true));

    // Errors name the file and the field.
    assert_eq!(
        msg(AgentFileConfig::parse(
            "x.json",
            r#"{"ports": {"http": "80"}}"#
        )),
        "x.json: Request decode failed: ports.http: expected a number, got \"80\""
    );
    assert_eq!(
        msg(AgentFileConfig::parse(
            "x.json",
            r#"{"services": [{"port": 1}]}"#
        )),
        "x.json: services[0]: Missing service name"
    );
    assert_eq!(
        msg(AgentFileConfig::parse(
            "x.json",
            r#"{"check": {"name": "c"}}"#
        )),
        "x.json: check: Invalid check: TTL must be > 0 for TTL checks"
    );
    assert!(msg(AgentFileConfig::parse("x.json", "{")).starts_with("x.json: "));
    assert!(msg(AgentFileConfig::parse("x.yaml", "a: 1")).contains("expected .json or .hcl"));
}

/// Examples in the style of Consul's docs, in HCL.
#[test]
fn config_hcl() {
    let text = r#"
datacenter = "east-aws"
data_dir = "/opt/consul"
log_level = "INFO"
node_name = "foobar"
server = true
retry_join = ["10.0.4.67"]

ports {
  http = 8500
  grpc = 8502
}

connect {
  enabled = true
}

service {
  name = "redis"
  address = "192.0.2.10"
  port = 80
  tagged_addresses {
    lan = {
      address = "192.0.2.10"
      port = 80
    }
  }
  meta = {
    custom_meta_key = "custom_meta_value"
  }
  weights = {
    passing = 3
    warning = 2
    critical = 1
  }
  checks = [
    {
      args = ["/usr/local/bin/check_redis.py"]
      interval = "10s"
    }
  ]
  connect {
    sidecar_service {
      port = 2345
      proxy {
        upstreams = [
          {
            destination_name = "db"
            local_bind_port = 7000
          }
        ]
      }
    }
  }
}

services {
  name = "a"
}
services {
  name = "b"
}

check = {
  id = "api"
  name = "HTTP API on port 5000"
  http = "https://localhost:5000/health"
  tls_skip_verify = false
  method = "POST"
  header = {
    Content-Type = ["application/json"]
  }
  body = "{\"method\":\"health\"}"
  disable_redirects = true
  interval = "10s"
  timeout = "1s"
}
"#;
    let c = AgentFileConfig::parse("consul.hcl", text).unwrap();
    assert_eq!(c.datacenter.as_deref(), Some("east-aws"));
    assert_eq!(c.server, Some(true));
    assert_eq!(c.ports.grpc, Some(8502));
    assert_eq!(c.connect_enabled, Some(true));
    let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["redis", "a", "b"]);
    let redis = &c.services[0];
    assert_eq!(redis.meta["custom_meta_key"], "custom_meta_value");
    assert_eq!(
        redis.weights,
        Some(Weights {
            passing: 3,
            warning: 2
        })
    );
    assert_eq!(redis.checks[0].kind().unwrap(), CheckKind::Script);
    let side = redis.sidecar().unwrap();
    assert_eq!(side.port, Some(2345));
    let proxy = side.proxy.unwrap();
    assert_eq!(proxy.local_service_port, 80);
    assert_eq!(proxy.upstreams[0].destination_name, "db");
    assert_eq!(proxy.upstreams[0].local_bind_port, 7000);
    let check = &c.checks[0];
    assert_eq!(check.id, "api");
    assert_eq!(check.header["Content-Type"], ["application/json"]);
    assert_eq!(check.body.as_deref(), Some("{\"method\":\"health\"}"));
    assert_eq!(check.kind().unwrap(), CheckKind::Http);

    // The same service written in JSON decodes alike.
    let json = AgentFileConfig::parse(
        "consul.json",
        r#"{"service": {"name": "redis", "address": "192.0.2.10", "port": 80,
            "meta": {"custom_meta_key": "custom_meta_value"},
            "weights": {"passing": 3, "warning": 2, "critical": 1},
            "checks": [{"args": ["/usr/local/bin/check_redis.py"], "interval": "10s"}],
            "connect": {"sidecar_service": {"port": 2345, "proxy": {"upstreams":
                [{"destination_name": "db", "local_bind_port": 7000}]}}}}}"#,
    )
    .unwrap();
    assert_eq!(json.services[0], *redis);

    assert!(msg(AgentFileConfig::parse("bad.hcl", "service {")).starts_with("bad.hcl: "));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "Name",
        "name",
        "ID",
        "id",
        "Port",
        "port",
        "Check",
        "Checks",
        "checks",
        "TTL",
        "ttl",
        "Interval",
        "HTTP",
        "TCP",
        "Args",
        "Meta",
        "Header",
        "Weights",
        "Passing",
        "Connect",
        "sidecar_service",
        "Proxy",
        "Upstreams",
        "LocalBindPort",
        "DestinationName",
        "Service",
        "Node",
        "Address",
        "NodeMeta",
        "Status",
        "services",
        "service",
        "ports",
        "http",
        "retry_join",
        "Kind",
        "Tags",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "10s",
            "1m",
            "web",
            "",
            "-1s",
            "1.5h",
            "connect-proxy",
            "passing",
            "0"
        ])
        .prop_map(|s| json!(s)),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone().prop_map(String::from), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn no_input_panics(v in arb_json()) {
        if let Ok(s) = decode_service(&v) {
            let _ = s.to_node_service();
            let _ = s.sidecar();
            for c in s.checks() {
                let _ = c.to_health_check("n");
            }
        }
        if let Ok(c) = decode_check(&v) {
            let _ = c.to_health_check("n");
        }
        let _ = decode_catalog_register(&v);
        let _ = decode_catalog_deregister(&v);
        let _ = AgentFileConfig::parse("f.json", &v.to_string());
    }

    #[test]
    fn durations_never_panic(s in ".{0,24}", digits in "[0-9.]{1,25}[a-zµ]{0,3}") {
        let _ = parse_go_duration(&s);
        let _ = parse_go_duration(&digits);
    }

    #[test]
    fn hcl_never_panics(s in ".{0,64}") {
        let _ = AgentFileConfig::parse("f.hcl", &s);
    }
}

#[test]
fn tls_keys_in_all_three_places_with_consuls_precedence() {
    // Top level < tls.defaults < tls.internal_rpc, within one file.
    let c = AgentFileConfig::parse_json(
        r#"{"ca_file": "old-ca.pem", "verify_incoming": false, "verify_server_hostname": false,
            "tls": {"defaults": {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem",
                                 "verify_incoming": true, "verify_outgoing": true},
                    "internal_rpc": {"verify_server_hostname": true},
                    "https": {"verify_incoming": false}},
            "ports": {"https": 8501}}"#,
    )
    .unwrap();
    // HTTPS takes the defaults and its own block, not internal_rpc's.
    assert_eq!(
        c.tls_https,
        TlsFileConfig {
            ca_file: Some("ca.pem".into()),
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            verify_incoming: Some(false),
            verify_outgoing: Some(true),
            verify_server_hostname: Some(false),
        }
    );
    assert_eq!(c.ports.https, Some(8501));
    let off = AgentFileConfig::parse_json(r#"{"ports": {"https": -1}}"#).unwrap();
    assert_eq!(off.ports.https, Some(-1));
    let err = AgentFileConfig::parse_json(r#"{"ports": {"https": -2}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ports.https"), "{err}");
    assert_eq!(
        c.tls,
        TlsFileConfig {
            ca_file: Some("ca.pem".into()),
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            verify_incoming: Some(true),
            verify_outgoing: Some(true),
            verify_server_hostname: Some(true),
        }
    );
    // HCL blocks; a later file overrides only what it sets.
    let hcl = AgentFileConfig::parse(
        "tls.hcl",
        "domain = \"example\"\ntls {\n  internal_rpc {\n    verify_incoming = false\n  }\n}\n",
    )
    .unwrap();
    let merged = c.merge(hcl);
    assert_eq!(merged.tls.verify_incoming, Some(false));
    assert_eq!(merged.tls.ca_file.as_deref(), Some("ca.pem"));
    assert_eq!(merged.domain.as_deref(), Some("example"));
    // Wrong types name the key.
    let err = AgentFileConfig::parse_json(r#"{"tls": {"defaults": {"verify_incoming": "yes"}}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("verify_incoming"), "{err}");
    // The checked-in bare-metal example.
    let deploy = include_str!("../../../deploy/tls.json");
    let d = AgentFileConfig::parse("tls.json", deploy).unwrap();
    assert_eq!(
        (
            d.tls.verify_incoming,
            d.tls.verify_outgoing,
            d.tls.verify_server_hostname
        ),
        (Some(true), Some(true), Some(true))
    );
}

#[test]
fn auto_encrypt_in_json_and_hcl_merges_like_consul() {
    let server = AgentFileConfig::parse_json(r#"{"auto_encrypt": {"allow_tls": true}}"#).unwrap();
    assert_eq!(server.auto_encrypt.allow_tls, Some(true));
    assert_eq!(server.auto_encrypt.tls, None);
    let client = AgentFileConfig::parse(
        "client.hcl",
        "auto_encrypt {\n  tls = true\n  dns_san = [\"fcs00.example\"]\n  ip_san = [\"10.0.0.13\"]\n}\n",
    )
    .unwrap();
    assert_eq!(
        client.auto_encrypt,
        AutoEncryptConfig {
            tls: Some(true),
            allow_tls: None,
            dns_san: vec!["fcs00.example".into()],
            ip_san: vec!["10.0.0.13".into()],
        }
    );
    let later =
        AgentFileConfig::parse_json(r#"{"auto_encrypt": {"tls": false, "dns_san": ["b"]}}"#)
            .unwrap();
    let merged = client.merge(later);
    assert_eq!(merged.auto_encrypt.tls, Some(false));
    assert_eq!(merged.auto_encrypt.dns_san, ["fcs00.example", "b"]);
    let keyed = AgentFileConfig::parse_json(r#"{"encrypt": "k1"}"#).unwrap();
    assert_eq!(
        keyed
            .clone()
            .merge(AgentFileConfig::default())
            .encrypt
            .as_deref(),
        Some("k1")
    );
    let rekeyed = AgentFileConfig::parse_json(r#"{"encrypt": "k2"}"#).unwrap();
    assert_eq!(keyed.merge(rekeyed).encrypt.as_deref(), Some("k2"));
    let err = AgentFileConfig::parse_json(r#"{"auto_encrypt": {"tls": "yes"}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("auto_encrypt.tls"), "{err}");
}
