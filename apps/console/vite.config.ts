import { defineConfig } from 'vite';

// Served by the control plane at /console/; JSX through Vite's own transform (no Babel plugin),
// so a build takes a few seconds. Everything is bundled: no CDN, no runtime fetch of code.
export default defineConfig({
  base: '/console/',
  oxc: { jsx: { runtime: 'automatic' } },
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 1500 },
  logLevel: 'warn',
});
