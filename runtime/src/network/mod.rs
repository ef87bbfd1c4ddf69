//! A node's networking below the task: named network namespaces (`netns`), links, addresses
//! and routes through rtnetlink (`link`) and the node's nftables table (`nft`).

pub mod conntrack;
pub mod link;
pub mod netns;
pub mod nft;
