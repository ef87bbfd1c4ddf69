//! A node's networking below the task: named network namespaces (`netns`), links, addresses
//! and routes through rtnetlink (`link`), the node's nftables table (`nft`) and
//! the name files each container gets (`names`).

pub mod conntrack;
pub mod hostport;
pub mod link;
pub mod names;
pub mod netns;
pub mod nft;
