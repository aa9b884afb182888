//! A generated multi-language repository: the same bytes for the same size, so runs compare.
//! Used by the demo, the tests and `pylon bench repomap`.

use std::path::Path;

/// Writes `files` source files (Rust, Python, JavaScript, TypeScript and Go in turn) under `root`.
pub fn generate(root: &Path, files: usize) -> std::io::Result<()> {
    for i in 0..files {
        let (path, text) = match i % 5 {
            0 => (format!("rust/src/m{i}.rs"), rust(i)),
            1 => (format!("python/pkg/m{i}.py"), python(i)),
            2 => (format!("js/lib/m{i}.js"), javascript(i)),
            3 => (format!("ts/src/m{i}.ts"), typescript(i)),
            _ => (format!("go/pkg{}/m{i}.go", i % 4), go(i)),
        };
        let p = root.join(path);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(p, text)?;
    }
    Ok(())
}

fn rust(i: usize) -> String {
    let prev = i.saturating_sub(5);
    format!(
        "//! Module {i}: part of the generated sample.\n\
         use crate::m{prev}::Widget{prev};\n\n\
         /// A widget.\n\
         pub struct Widget{i} {{\n    pub size: u32,\n}}\n\n\
         pub enum Mode{i} {{ Fast, Slow }}\n\n\
         pub trait Render{i} {{\n    fn render(&self) -> String;\n}}\n\n\
         impl Widget{i} {{\n    pub fn new(size: u32) -> Self {{\n        Self {{ size }}\n    }}\n\n    fn grow(&mut self) {{\n        self.size += {i};\n    }}\n}}\n\n\
         pub const LIMIT_{i}: u32 = {i};\n\n\
         pub fn compute_{i}(x: u32) -> u32 {{\n    x * {i} + LIMIT_{i}\n}}\n\n\
         fn helper_{i}() -> bool {{\n    true\n}}\n"
    )
}

fn python(i: usize) -> String {
    let prev = i.saturating_sub(5).max(1);
    format!(
        "\"\"\"Module {i}: generated sample.\"\"\"\n\
         import os\n\
         from .m{prev} import Service{prev}\n\n\
         RETRIES_{i} = {i}\n\n\n\
         class Service{i}:\n    \"\"\"A service.\"\"\"\n\n    def __init__(self, name):\n        self.name = name\n\n    def run(self, n):\n        return n * {i}\n\n    def _private(self):\n        return None\n\n\n\
         def start_{i}(name):\n    return Service{i}(name).run({i})\n\n\n\
         def _internal_{i}():\n    return os.getcwd()\n"
    )
}

fn javascript(i: usize) -> String {
    let prev = i.saturating_sub(5).max(2);
    format!(
        "/**\n * Module {i}: generated sample.\n */\n\
         import {{ helper{prev} }} from './m{prev}.js';\n\n\
         export const VERSION_{i} = '{i}.0';\n\n\
         export function build{i}(opts) {{\n  return {{ ...opts, id: {i} }};\n}}\n\n\
         export class Store{i} {{\n  constructor() {{\n    this.items = [];\n  }}\n\n  add(item) {{\n    this.items.push(item);\n  }}\n}}\n\n\
         export const helper{i} = (x) => x + {i};\n\n\
         function local{i}() {{\n  return helper{prev}(1);\n}}\n"
    )
}

fn typescript(i: usize) -> String {
    let prev = i.saturating_sub(5).max(3);
    format!(
        "// Module {i}: generated sample.\n\
         import {{ Shape{prev} }} from './m{prev}';\n\n\
         export interface Shape{i} {{\n  area(): number;\n}}\n\n\
         export type Id{i} = string;\n\n\
         export enum Color{i} {{ Red, Green }}\n\n\
         export class Square{i} implements Shape{i} {{\n  constructor(private side: number) {{}}\n\n  area(): number {{\n    return this.side * this.side;\n  }}\n}}\n\n\
         export function make{i}(side: number): Square{i} {{\n  return new Square{i}(side);\n}}\n\n\
         function check{i}(s: Shape{prev}): boolean {{\n  return s.area() > {i};\n}}\n"
    )
}

fn go(i: usize) -> String {
    let pkg = format!("pkg{}", i % 4);
    format!(
        "// Package {pkg} is generated sample code (file {i}).\n\
         package {pkg}\n\n\
         import (\n\t\"fmt\"\n\t\"strings\"\n)\n\n\
         // Server{i} serves.\n\
         type Server{i} struct {{\n\tName string\n}}\n\n\
         type Handler{i} interface {{\n\tHandle() error\n}}\n\n\
         const Port{i} = {i}\n\n\
         var verbose{i} = false\n\n\
         func NewServer{i}(name string) *Server{i} {{\n\treturn &Server{i}{{Name: strings.ToUpper(name)}}\n}}\n\n\
         func (s *Server{i}) Start() error {{\n\tfmt.Println(s.Name)\n\treturn nil\n}}\n\n\
         func helper{i}() int {{\n\treturn {i}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executors::code::analyze;

    #[test]
    fn deterministic_and_parseable() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        generate(a.path(), 10).expect("gen");
        generate(b.path(), 10).expect("gen");
        let (fa, _) = crate::fanout::walk::collect(a.path(), &[], &[]).expect("walk");
        let (fb, _) = crate::fanout::walk::collect(b.path(), &[], &[]).expect("walk");
        assert_eq!(fa, fb);
        assert_eq!(fa.len(), 10);
        for f in &fa {
            let an = analyze(&f.path, &f.content);
            assert!(
                an.definitions.len() >= 5,
                "{}: {:?}",
                f.path,
                an.definitions
            );
            assert_ne!(an.language, "text");
        }
    }
}
