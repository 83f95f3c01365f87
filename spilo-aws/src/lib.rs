//! spilo's AWS side that the daemon does not link: KMS secrets (the `aws:kms:<base64>` form
//! senza's Spilo templates used for passwords) and the CloudFormation template of a cluster
//! (`spiloctl aws template`). `spiloctl` links this crate; the daemon opens an `aws:kms:`
//! secret by running `spiloctl aws kms decrypt`, so the AWS SDK never maps into a node that
//! does not use it.

pub mod autoscaling;
pub mod kms;
mod sdk;
pub mod template;
