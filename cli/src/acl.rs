//! `sluice acl add | list | remove`: the cluster's ACL bindings (issue 13).
//! A binding lets (or, with `--deny`, forbids) a principal one operation on
//! the resources a pattern covers. With `[auth] enabled`, whatever no
//! binding allows is denied, and a deny always wins.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use sluice_client::{Admin, ClientConfig};
use sluice_proto::v1::AclBinding;

#[derive(Subcommand)]
pub enum AclCommand {
    /// Add a binding.
    Add(BindingArgs),
    /// List every binding.
    List,
    /// Remove a binding (given exactly as added).
    Remove(BindingArgs),
}

#[derive(Args)]
pub struct BindingArgs {
    /// Who: `User:<name>` (the common name of a client certificate), or
    /// `User:*` for every user.
    #[arg(long)]
    pub principal: String,
    /// What: All, Read, Write, Create, Delete, Alter, Describe,
    /// ClusterAction, IdempotentWrite.
    #[arg(long)]
    pub operation: String,
    /// On a topic.
    #[arg(long, group = "resource")]
    pub topic: Option<String>,
    /// On a consumer group.
    #[arg(long, group = "resource")]
    pub group: Option<String>,
    /// On a subscription, written `<topic>/<subscription>`.
    #[arg(long, group = "resource")]
    pub subscription: Option<String>,
    /// On the cluster itself.
    #[arg(long, group = "resource")]
    pub cluster: bool,
    /// The name is a prefix: every resource whose name starts with it.
    #[arg(long)]
    pub prefixed: bool,
    /// Forbid instead of allow (a deny wins over every allow).
    #[arg(long)]
    pub deny: bool,
    /// Only from this address (default: any).
    #[arg(long, default_value = "*")]
    pub host: String,
}

impl BindingArgs {
    fn binding(&self) -> Result<AclBinding> {
        let (resource_type, name) =
            match (&self.topic, &self.group, &self.subscription, self.cluster) {
                (Some(topic), None, None, false) => ("Topic", topic.clone()),
                (None, Some(group), None, false) => ("Group", group.clone()),
                (None, None, Some(subscription), false) => ("Subscription", subscription.clone()),
                (None, None, None, true) => {
                    ("Cluster", sluice_acl::CLUSTER_RESOURCE_NAME.to_string())
                }
                _ => bail!("give one of --topic, --group, --subscription or --cluster"),
            };
        let wire = AclBinding {
            principal: self.principal.clone(),
            host: self.host.clone(),
            operation: self.operation.clone(),
            permission: if self.deny { "Deny" } else { "Allow" }.to_string(),
            resource_type: resource_type.to_string(),
            resource_name: name,
            pattern_type: if self.prefixed { "Prefixed" } else { "Literal" }.to_string(),
        };
        // Checked here for a clear message before the round trip.
        let parsed = sluice_acl::AclBinding::try_from(&wire)?;
        Ok(AclBinding::from(&parsed))
    }
}

pub async fn run(config: ClientConfig, command: AclCommand) -> Result<()> {
    let admin = Admin::connect(config).await?;
    match command {
        AclCommand::Add(args) => {
            let created = admin.create_acls(vec![args.binding()?]).await?;
            println!(
                "{}",
                if created == 1 {
                    "added"
                } else {
                    "already there"
                }
            );
        }
        AclCommand::Remove(args) => {
            let deleted = admin.delete_acls(vec![args.binding()?]).await?;
            println!(
                "{}",
                if deleted == 1 {
                    "removed"
                } else {
                    "no such binding"
                }
            );
        }
        AclCommand::List => {
            let bindings = admin.list_acls().await?;
            if crate::output::json() {
                let list: Vec<serde_json::Value> = bindings
                    .iter()
                    .map(|binding| {
                        serde_json::json!({
                            "permission": binding.permission,
                            "principal": binding.principal,
                            "operation": binding.operation,
                            "resource_type": binding.resource_type,
                            "pattern_type": binding.pattern_type,
                            "resource_name": binding.resource_name,
                            "host": binding.host,
                        })
                    })
                    .collect();
                return crate::output::print_json(&serde_json::json!({ "bindings": list }));
            }
            let rows: Vec<Vec<String>> = bindings
                .into_iter()
                .map(|binding| {
                    vec![
                        binding.permission,
                        binding.principal,
                        binding.operation,
                        binding.resource_type,
                        binding.pattern_type,
                        binding.resource_name,
                        binding.host,
                    ]
                })
                .collect();
            crate::output::print_table(
                &[
                    "PERMISSION",
                    "PRINCIPAL",
                    "OPERATION",
                    "RESOURCE",
                    "PATTERN",
                    "NAME",
                    "HOST",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BindingArgs {
        BindingArgs {
            principal: "User:alice".into(),
            operation: "read".into(),
            topic: Some("orders".into()),
            group: None,
            subscription: None,
            cluster: false,
            prefixed: false,
            deny: false,
            host: "*".into(),
        }
    }

    #[test]
    fn bindings_are_checked_and_written_canonically() {
        let binding = args().binding().expect("valid");
        assert_eq!(
            (binding.operation.as_str(), binding.resource_type.as_str()),
            ("Read", "Topic")
        );
        let cluster = BindingArgs {
            topic: None,
            cluster: true,
            ..args()
        }
        .binding()
        .expect("valid");
        assert_eq!(cluster.resource_name, "sluice-cluster");
        assert!(
            BindingArgs {
                topic: None,
                ..args()
            }
            .binding()
            .is_err(),
            "no resource"
        );
        assert!(BindingArgs {
            principal: "alice".into(),
            ..args()
        }
        .binding()
        .is_err());
        assert!(BindingArgs {
            operation: "Eat".into(),
            ..args()
        }
        .binding()
        .is_err());
    }
}
