// The dashboard's build: one page whose assets are served by jc under /ui/assets/ (embedded in
// the binary by the zeroflow-dashboard crate). Nothing is loaded from elsewhere at run time.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/ui/",
  root: ".",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // Fonts and images are inlined or absent: every byte comes from jc.
    assetsInlineLimit: 8192,
    sourcemap: false,
    target: "es2022",
  },
});
