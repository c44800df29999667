pub mod fake_agent;
