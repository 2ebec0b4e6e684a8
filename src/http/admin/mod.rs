pub mod crawl;
