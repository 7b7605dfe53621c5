import { createContext, useCallback, useContext, useEffect, useState } from 'react';

/** Bumped by every platform event (or poll): views reload what they show. */
export const LiveContext = createContext(0);

export function navigate(path: string): void {
  history.pushState(null, '', path);
  dispatchEvent(new PopStateEvent('popstate'));
}

export function usePath(): string {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const on = () => setPath(location.pathname);
    addEventListener('popstate', on);
    return () => removeEventListener('popstate', on);
  }, []);
  return path;
}

/** Loads `load()` now, again when `deps` change and on every live event; keeps the last value. */
export function useData<T>(
  load: () => Promise<T>,
  deps: unknown[],
): { data: T | undefined; error: Error | undefined; reload: () => void } {
  const live = useContext(LiveContext);
  const [data, setData] = useState<T>();
  const [error, setError] = useState<Error>();
  const [n, setN] = useState(0);
  const reload = useCallback(() => setN((x) => x + 1), []);
  useEffect(() => {
    let current = true;
    load().then(
      (d) => {
        if (current) {
          setData(d);
          setError(undefined);
        }
      },
      (e: Error) => {
        if (current) setError(e);
      },
    );
    return () => {
      current = false;
    };
  }, [...deps, live, n]);
  return { data, error, reload };
}
