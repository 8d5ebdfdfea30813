//! Prints the cluster status, topics with their partitions' owners, and
//! consumer groups. Run against `sluice dev`:
//! `cargo run -p sluice-client --example admin`.
//! Set SLUICE_BOOTSTRAP to use another nameserver.

use sluice_client::{Admin, ClientConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = ClientConfig::default();
    if let Ok(bootstrap) = std::env::var("SLUICE_BOOTSTRAP") {
        config.bootstrap = bootstrap.split(',').map(str::to_string).collect();
    }
    let admin = Admin::connect(config).await?;

    let status = admin.cluster_status().await?;
    println!(
        "{} nameserver(s), {} broker(s), {} store(s); {} topics, {} partitions ({} offline); metadata: {}",
        status.nameservers.len(),
        status.brokers.len(),
        status.stores.len(),
        status.topics,
        status.partitions,
        status.offline_partitions,
        status.metadata_backend
    );

    for topic in admin.list_topics(false).await? {
        let description = admin.describe_topic(&topic.name).await?;
        println!("topic {}", topic.name);
        for partition in description.partitions {
            if let Some(route) = partition.route {
                println!(
                    "  partition {} -> {} (epoch {}), {} segment(s)",
                    route.partition,
                    if route.broker_address.is_empty() {
                        "offline"
                    } else {
                        &route.broker_address
                    },
                    route.epoch,
                    partition.segments.len()
                );
            }
        }
    }

    for group in admin.list_groups().await? {
        match admin.describe_group(&group.group).await {
            Ok(description) => {
                println!(
                    "group {} ({}), {} member(s)",
                    group.group,
                    description.state,
                    description.members.len()
                );
                for lag in description.lag {
                    println!(
                        "  {}/{} committed {} lag {}",
                        lag.topic, lag.partition, lag.committed_offset, lag.lag
                    );
                }
            }
            Err(error) => println!("group {}: {error}", group.group),
        }
    }
    Ok(())
}
