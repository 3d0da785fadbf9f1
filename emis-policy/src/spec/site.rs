//! The site: the `[roles]` table of a site file and the `--site-net ROLE=CIDR` flags.

use ipnet::IpNet;

use super::error::SpecError;
use super::tree::{parse_cidr, want_array, want_cidr, want_table, Doc, Table};
use super::SiteOptions;
use crate::policy::Role;

pub(super) type Roles = [Option<Vec<IpNet>>; emis_common::ROLE_COUNT as usize];

fn add_role_prefix(roles: &mut Roles, role: Role, net: IpNet) {
    let list = roles[role.0 as usize].get_or_insert_with(Vec::new);
    if !list.contains(&net) {
        list.push(net);
    }
}

pub(super) fn load_site(site: &SiteOptions) -> Result<Roles, SpecError> {
    let mut roles: Roles = Default::default();
    if let Some(source) = &site.site_file {
        let doc = Doc::new(source);
        let root = doc.parse()?;
        let top = Table {
            doc: &doc,
            path: String::new(),
            span: None,
            entries: &root,
        };
        top.deny_unknown(&["roles"])?;
        if let Some(v) = top.get("roles") {
            let table = want_table(&doc, v, "roles".to_owned())?;
            for (key, value) in table.entries {
                let field = table.sub(&key.name);
                let Some(role) = Role::from_name(&key.name) else {
                    return Err(doc
                        .error(
                            key.span.as_ref(),
                            field,
                            format!("unknown site role `{}`", key.name),
                        )
                        .with_hint(format!(
                            "the site roles are: {}",
                            emis_common::ROLE_NAMES.join(", ")
                        )));
                };
                let items = want_array(&doc, value, &field)?;
                if items.is_empty() {
                    return Err(doc
                        .error(Some(&value.span()), field, format!("no prefixes for role `{}`", key.name))
                        .with_hint("leave the role out to mean \"any address outside the enforce-scope networks\""));
                }
                for (i, item) in items.iter().enumerate() {
                    let net = want_cidr(&doc, item, &format!("{field}[{i}]"))?;
                    add_role_prefix(&mut roles, role, net);
                }
            }
        }
    }
    for arg in &site.site_nets {
        let err = |message: String, hint: String| {
            SpecError::new("--site-net", message)
                .with_field(arg.as_str())
                .with_hint(hint)
        };
        let Some((name, cidr)) = arg.split_once('=') else {
            return Err(err(
                "expected ROLE=CIDR".to_owned(),
                "for example --site-net lan=192.168.10.0/24".to_owned(),
            ));
        };
        let Some(role) = Role::from_name(name.trim()) else {
            return Err(err(
                format!("unknown site role `{}`", name.trim()),
                format!("the site roles are: {}", emis_common::ROLE_NAMES.join(", ")),
            ));
        };
        let net = parse_cidr(cidr.trim()).map_err(|(message, hint)| err(message, hint))?;
        add_role_prefix(&mut roles, role, net);
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testutil::*;

    // ----- site -----

    #[test]
    fn site_file_and_flags_combine() {
        let mut site = site_file(
            "[roles]\nlan = [\"192.168.10.0/24\"]\nclinical-server = [\"192.168.10.5/32\"]\n",
        );
        site.site_nets = vec![
            "lan=192.168.20.0/24".into(),
            "lan=192.168.10.0/24".into(),
            "surgery = 2001:db8::/64".into(),
        ];
        let policy = load_with_site(BASE, &site).unwrap();
        assert_eq!(
            policy.role(Role::LAN),
            Some([ip("192.168.10.0/24"), ip("192.168.20.0/24")].as_slice())
        );
        assert_eq!(
            policy.role(Role::CLINICAL_SERVER),
            Some([ip("192.168.10.5/32")].as_slice())
        );
        assert_eq!(
            policy.role(Role::SURGERY),
            Some([ip("2001:db8::/64")].as_slice())
        );
        assert_eq!(policy.role(Role::LOCAL_SITES), None);
        assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
    }

    #[test]
    fn site_errors() {
        let text = "[roles]\nlan = [\"192.168.10.0/24\"]\nwifi = [\"10.9.0.0/16\"]\n";
        let e = load_with_site(BASE, &site_file(text)).unwrap_err();
        assert_err(
            &e,
            "site.toml",
            pos(text, "wifi"),
            "roles.wifi",
            "unknown site role `wifi`",
        );
        let text = "[roles]\nlan = [\"192.168.10.0/24\", \"192.168.10.1/24\"]\n";
        let e = load_with_site(BASE, &site_file(text)).unwrap_err();
        assert_err(
            &e,
            "site.toml",
            pos(text, "\"192.168.10.1"),
            "roles.lan[1]",
            "host bits set",
        );
        let text = "[roles]\nlan = []\n";
        let e = load_with_site(BASE, &site_file(text)).unwrap_err();
        assert_err(&e, "site.toml", pos(text, "[]"), "roles.lan", "no prefixes");
        let text = "lan = [\"192.168.10.0/24\"]\n";
        let e = load_with_site(BASE, &site_file(text)).unwrap_err();
        assert_err(
            &e,
            "site.toml",
            pos(text, "lan"),
            "lan",
            "unknown key `lan`",
        );
        let text = "[roles]\nlan = [\"192.168.10.0/24\"\n";
        let e = load_with_site(BASE, &site_file(text)).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("site.toml", Some(3)), "{e}");
        assert_eq!(e.field.as_deref(), Some("roles.lan"));

        for (arg, message) in [
            ("lan", "expected ROLE=CIDR"),
            ("wifi=10.0.0.0/8", "unknown site role `wifi`"),
            ("lan=10.0.0.0/33", "invalid prefix"),
            ("lan=10.0.0.1/8", "host bits set"),
        ] {
            let site = SiteOptions {
                site_nets: vec![arg.to_owned()],
                ..Default::default()
            };
            let e = load_with_site(BASE, &site).unwrap_err();
            assert_eq!(
                (e.file.as_str(), e.field.as_deref(), e.line),
                ("--site-net", Some(arg), None),
                "{e}"
            );
            assert!(e.message.contains(message), "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("--site-net: in `{arg}`: ")),
                "{e}"
            );
        }
    }
}
